"""Full-size SD 2.x weights (5.2 GB fp32, synthetic values): convert to the default format, then load
the result twice through ``load_sd_weights`` (what sampling and training call) right after, with the
page cache full of the files just written. Each step runs in its own process so its peak RSS is its
own; the limits are the figures docs/models_and_inference.md gives.

MindSpore's ``load_checkpoint`` refused such files in 3 of 4 tries because it compares the file size
with *free* memory (page cache counted as used). The load processes here report almost no free
memory to anything that asks (``os.sysconf``), so a path that still consulted it would fail every time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "models_and_inference.md"
# peak RSS, GB: the figures the docs table states for each step
DOCUMENTED_PEAK_GB = {"convert": 1.0, "load": 6.0}
SEED = 7
CHECKED = ("cond_stage_model.model.token_embedding.weight", "model.diffusion_model.input_blocks.1.1.proj_in.weight",
           "first_stage_model.decoder.mid.attn_1.q.weight", "model.diffusion_model.out.2.bias")

_PRELUDE = f"""
import json, sys
import numpy as np
from mindspore.nn.utils import no_init_parameters
from mindone.models.config import build_model, load_model_config

def full_size_model():
    with no_init_parameters():
        return build_model(load_model_config("v2-base-512-eps"))

def synthetic(index, shape):  # the value of tensor number `index`: reproducible, different per tensor
    return np.random.default_rng([{SEED}, index]).random(shape, dtype=np.float32) - 0.5

def peak_gb():  # VmHWM: this process's own peak (ru_maxrss would include pytest's RSS from before exec)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1e6

def report(**extra):
    print(json.dumps({{"peak_gb": peak_gb(), **extra}}))
"""

WRITE = _PRELUDE + """
from mindone.convert.mindspore_ckpt import write_mindspore_checkpoint
layout = [(name, tuple(p.shape)) for name, p in full_size_model().parameters_and_names()]
write_mindspore_checkpoint(sys.argv[1], ((n, synthetic(i, s)) for i, (n, s) in enumerate(layout)))
report()
"""

CONVERT = _PRELUDE + """
import runpy
main = runpy.run_path("tools/model_conversion/convert_weights.py")["main"]  # run from the checkout (cwd=REPO)
main(["--source", sys.argv[1]])
report()
"""

LOAD = _PRELUDE + """
import os
import mindspore.train.serialization as serialization
real_sysconf = os.sysconf
os.sysconf = lambda name: 4096 if name == "SC_AVPHYS_PAGES" else real_sysconf(name)  # ~16 MB "free"
assert serialization._get_available_memory() < os.path.getsize(sys.argv[1])  # MindSpore would refuse
from mindone.convert import load_sd_weights
model = full_size_model()
result = load_sd_weights(model, sys.argv[1])
load_peak = peak_gb()  # before the check below regenerates a few tensors
index = {name: i for i, (name, _) in enumerate(model.parameters_and_names())}
params = dict(model.parameters_and_names())
checked = json.loads(sys.argv[2])
mismatched = [n for n in checked if not np.array_equal(params[n].asnumpy(), synthetic(index[n], params[n].shape))]
report(loaded=result["loaded"], layout=result["layout"], mismatched=mismatched, load_peak_gb=load_peak)
"""


def run_step(code: str, *args: str, timeout: int = 600) -> dict:
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                         cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"{Path(args[0]).name}: {result}")  # the measured figures, shown with pytest -s
    return result


def test_documented_figures_are_the_ones_checked():
    rows = [line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    for step, gb in DOCUMENTED_PEAK_GB.items():
        assert any(row.startswith(f"| {step} ") and f"≤ {gb:.1f} GB" in row for row in rows), step


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_full_size_convert_then_load_twice_with_the_page_cache_full(tmp_path):
    source, target = tmp_path / "sd2_full.ckpt", tmp_path / "sd2_full.safetensors"
    try:
        run_step(WRITE, str(source))
        assert source.stat().st_size > 5.1e9
        converted = run_step(CONVERT, str(source))
        assert target.is_file() and target.stat().st_size > 5.1e9  # the default target: <source>.safetensors
        assert converted["peak_gb"] <= DOCUMENTED_PEAK_GB["convert"], converted
        for attempt in range(2):  # right after writing it, twice: the issue failed 3 of 4 times
            loaded = run_step(LOAD, str(target), json.dumps(CHECKED))
            assert loaded["loaded"] == 1214 and loaded["layout"] == "ldm" and loaded["mismatched"] == [], loaded
            assert loaded["load_peak_gb"] <= DOCUMENTED_PEAK_GB["load"], (attempt, loaded)
    finally:  # 10 GB: not left for pytest's kept temporary directories
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
