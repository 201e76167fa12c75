"""Training on two processes (DistributedDataParallel, gloo on the CPU) equals training on one.

The same script runs as one process and under torchrun as two, each of the two holding half of
every batch. DDP averages their gradients, and the objective draws its random numbers for the whole
batch and keeps its own rows, so the two-process run must take the same steps as the one-process
run: equal weights and losses up to the order of floating-point sums. A run stopped and resumed
from its checkpoint on two processes must continue exactly.
"""

import socket
import subprocess
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
SCRIPT = f'''
import os, sys
from pathlib import Path
import torch
import ddpm_lib as dl
sys.path.insert(0, {str(TESTS)!r})
from toy_data import squares

out, steps = Path(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = dl.UNet(1, 8, (1, 2))
# float32: bf16 (what amp="auto" may pick on this CPU) rounds half-batches differently from whole ones
result = dl.train(model, dl.cosine_schedule(50), squares(32), steps=steps, batch_size=8, lr=1e-3, device="cpu",
                  progress=False, log_every=3, checkpoint=out / "run.pt", checkpoint_every=3, amp="off")
if int(os.environ.get("RANK", 0)) == 0:
    torch.save({{"model": model.state_dict(), "ema": result.ema.state_dict(), "losses": result.losses}},
               out / "result.pt")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp_path, name, steps, processes):
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
                     "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    done = subprocess.run(launcher + [str(script), str(out), str(steps)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out / "result.pt")


def test_two_processes_with_half_the_batch_each_train_the_same_model(tmp_path):
    one, two = run(tmp_path, "one", 6, 1), run(tmp_path, "two", 6, 2)
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for key in ("model", "ema"):
        for a, b in zip(two[key].values(), one[key].values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_two_process_run_resumes_exactly_from_its_checkpoint(tmp_path):
    straight = run(tmp_path, "straight", 6, 2)
    run(tmp_path, "resumed", 3, 2)  # stops after 3 steps, writing resumed/run.pt
    resumed = run(tmp_path, "resumed", 6, 2)  # the same directory: continues from the checkpoint
    assert resumed["losses"] == straight["losses"]
    for a, b in zip(resumed["model"].values(), straight["model"].values()):
        assert torch.equal(a, b)
