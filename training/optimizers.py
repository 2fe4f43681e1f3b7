"""Muon for the transformer layers' weight matrices, AdamW for every other parameter, as one optimizer.

Muon (torch.optim.Muon) orthogonalises each 2-D weight's momentum update with a Newton-Schulz iteration; it is
meant for the hidden matrices only, so the embeddings (conv tokenizer, positions), norms, biases, the pooling and
the classifier keep AdamW. `adjust_lr_fn="match_rms_adamw"` scales Muon's step to AdamW's update size, so both
take the run's one `--learning_rate` and `--weight_decay` and follow one learning-rate schedule.

The Trainer takes `MuonAdamWFactory` through `optimizer_cls_and_kwargs`: it calls the factory with the model, so the
split by module happens after the model is placed, and it saves and restores the optimizer's state with the
checkpoints as for any optimizer.
"""

import torch
from torch import nn


def muon_parameter_names(model: nn.Module) -> set[str]:
    """The trainable weights of the linear layers inside the transformer layers (every ViX backbone keeps them
    under `...layers.<i>`): attention projections and MLPs.

    Outside them (tokenizer, positions, pooling, classifier) and vectors (biases, norms) are left to AdamW, as are
    linear layers with a side of 1 (nothing to orthogonalise).
    """
    names = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or ".layers." not in f".{module_name}.":
            continue
        if module.weight.requires_grad and min(module.weight.shape) > 1:
            names.add(f"{module_name}.weight")
    return names


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the parameters of `muon_groups`, AdamW for those of `adamw_groups`.

    Its `param_groups` are those of the two inner optimizers (the same dicts), so a learning-rate scheduler
    that sets `lr` on them drives both. `state_dict` holds both inner states.
    """

    def __init__(self, muon_groups, adamw_groups, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 momentum: float = 0.95):
        self.muon = torch.optim.Muon(muon_groups, lr=lr, momentum=momentum, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={"lr": lr})

    def _share_inner_groups(self) -> None:
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("This optimizer state is not a MuonAdamW state (keys 'muon' and 'adamw'); was the "
                             "checkpoint trained with another optimizer? Resume it with the optimizer it used.")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._share_inner_groups()  # loading replaced the inner group dicts


class MuonAdamWFactory:
    """What Trainer's `optimizer_cls_and_kwargs` takes for an optimizer that needs the model to split it.

    AdamW decays what has two or more dimensions (conv kernels, position embeddings, the classifier) and not
    biases or norm scales, as the Trainer's own grouping does for these models.
    """

    def __call__(self, model: nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.999),
                 eps: float = 1e-8) -> MuonAdamW:
        muon_names = muon_parameter_names(model)
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        muon = [p for name, p in trainable if name in muon_names]
        if not muon:
            raise ValueError("Muon found no trainable weight matrix in the model's transformer layers; "
                             "train it with AdamW (leave --muon off).")
        rest = [p for name, p in trainable if name not in muon_names]
        adamw_groups = [{"params": params, "weight_decay": decay_rate}
                        for params, decay_rate in (([p for p in rest if p.ndim >= 2], weight_decay),
                                                   ([p for p in rest if p.ndim < 2], 0.0)) if params]
        return MuonAdamW([{"params": muon, "weight_decay": weight_decay}], adamw_groups, lr=lr, betas=betas, eps=eps)
