"""Two-process CPU training (torchrun, gloo DDP): both ranks end with the same weights and test metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

def test_two_process_cpu_training_ranks_agree(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import hashlib, json, os, sys\n"
        "from transformers import TrainerCallback\n"
        "from training.train import main\n"
        "class Keep(TrainerCallback):\n"
        "    def on_train_end(self, args, state, control, model=None, **kwargs):\n"
        "        self.model = model\n"
        "keep = Keep()\n"
        "metrics = main(sys.argv[2:] + ['--output_dir', sys.argv[1]], callbacks=[keep])\n"
        "digest = hashlib.sha256()\n"
        "for name, tensor in sorted(keep.model.state_dict().items()):\n"
        "    digest.update(name.encode()); digest.update(tensor.detach().float().numpy().tobytes())\n"
        "result = {k: metrics[k] for k in ('test_accuracy', 'test_loss', 'world_size', 'global_steps')}\n"
        "result['weights_sha256'] = digest.hexdigest()\n"
        "with open(os.path.join(sys.argv[1], f\"rank{os.environ['RANK']}.json\"), 'w') as f:\n"
        "    json.dump(result, f)\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        str(worker), str(out),
        "--max_train_samples", "64", "--max_eval_samples", "40", "--max_steps", "4", "--per_device_train_batch_size", "8",
        "--hidden_size", "16", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "32",
        "--conv_stem_channels", "4", "8", "--image_size", "16", "--nystrom_residual_conv_kernel", "3",
        "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
        "--augmentation", "crop_flip", "--disable_tqdm", "true", "--use_cpu", "true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["world_size"] == 2 and ranks[0]["global_steps"] == 4
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "README.md").exists()
    assert result.stdout.count("model card:") == 1  # only rank 0 writes the folder and prints
