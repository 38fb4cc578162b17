"""The whole pipeline on embedded sample data, end to end, on one CPU machine.

    bash scripts/demo.sh            (installs into .venv, then runs this)

Stages (each skipped when its output from an earlier run is complete, so a second run reuses the first):
  1. sample     generate LAION-format metadata (improved_aesthetics schema) and the images its URLs name
  2. serve      start a local HTTP server for both (127.0.0.1, stopped at the end)
  3. metadata   download the metadata parquet from that server   (laion_download_metadata.py)
  4. filter     filter it with seed 001's conditions              (laion_filter_metadata.py)
  5. images     download the images into webdataset shards        (laion_download_imgs.sh)
  6. stats      write the stats csv the loader reads              (laion_gen_data_stats.py)
  7. vae        train the tiny model's autoencoder from scratch   (train_text_to_image.py --train_target vae)
  8. latents    cache the autoencoder's latents of every image    (encode_latents.py)
  9. check      decode 256 cached latents, score their colours    (check_autoencoder.py)
 10. train      train the tiny SD 2.x UNet on the cached latents  (train_text_to_image.py --dataset_type latents)
 11. sample     generate images from prompts                      (text_to_image.py)
 12. score      sample 16 other prompts x 2 and score what the images show (prompt_score.py)
 13. report     loss-curve PNG, sample grid PNG, where everything is

The tiny model starts from random weights, and SD training keeps the VAE frozen: with a random VAE every
latent would decode to noise, so the demo trains the autoencoder first (real SD runs load the released one).
The UNet recipe (UNET_RECIPE) is what makes the model follow its prompts in a few minutes on CPU: see
"What the demo's model can do" in examples/stable_diffusion_v2/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mindone.demo.prompt_score import SCORE_SEED, score_prompts, summary_line, write_score
from mindone.demo.scenes import make_sample
from mindone.utils.cli import run_main
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser
from mindone.utils.loopback import serve_directory

REPO = Path(__file__).resolve().parents[2]

TOOLS = REPO / "tools" / "laion_data_utils"
EXAMPLES = REPO / "examples" / "stable_diffusion_v2"
DEMO = REPO / "examples" / "demo"
# At 400 steps the autoencoder still confuses neighbouring colours (purple/blue, red/orange, white/yellow);
# 800 steps fix most of that (docs/benchmarks.md, issue 15 part 3).
VAE_STEPS = 800
# The autoencoder's recipe on top of configs/train/tiny_cpu.yaml: batches of 8, a near-deterministic
# posterior from the start (see --vae_init_logvar in docs/training.md) so the UNet later sees clean latents,
# and a learning rate of 3e-4: at tiny_cpu.yaml's 1e-3 the run sometimes sat at an L1 loss near 0.25 for all
# 800 steps, and its reconstructions then had the wrong colour (0.48 centre / 0.70 border on the check stage);
# at 3e-4, five runs of other seeds and data orders all reconstructed 1.00 / 1.00 (docs/benchmarks.md).
VAE_RECIPE = ["--train_batch_size", "8", "--vae_init_logvar", "-8", "--learning_rate", "3e-4"]
AUTOENCODER_MIN = 0.9  # the check stage's colour scores below which the summary warns
# The UNet's recipe on top of tiny_cpu.yaml. v-prediction on a zero-terminal-SNR schedule (both in the model
# config written by demo_model_config): the noisiest step sees noise only, so only the prompt can tell the
# colours, and the model cannot learn to read them from the noise's mean instead (SD's own schedule lets it
# on 8x8 latents: the same run then scores near chance). With eps-prediction the run ignores its prompts.
# Batches of 16, the tiny text tower trained along, validation once at the end (it compiles a sampler).
# It trains on the autoencoder's cached latents (stage 8), which makes its steps ~25% cheaper. The shape
# colour is what takes the longest to learn. The UNet is twice as wide as the tiny config's (DEMO_UNET): on
# 8x8 latents a step is mostly kernel launches, so 64 channels cost 1.5-1.7x a step of 32 and learn faster per
# step; 1000 of its steps take the time of 1500 narrow ones or up to 15% more, and scored 0.91 and 0.88 for
# the shape colour where the narrow UNet scored 0.88 and 0.78 (same data and autoencoder, seeds 0 and 1;
# docs/benchmarks.md).
UNET_STEPS = 1000
DEMO_UNET = {"model_channels": 64, "num_head_channels": 16}  # over configs/model/tiny.yaml's unet section
UNET_RECIPE = ["--train_batch_size", "16", "--train_text_encoder", "--checkpointing_steps", "100"]
GUIDANCE = 3.0  # of 2, 3 and 7.5 on the scored images, 3 scored best (docs/benchmarks.md)
PROMPTS = ["a red circle on a blue background", "a yellow square on a black background",
           "a green triangle on a white background", "a purple circle on a orange background"]
SAMPLES_PER_PROMPT = 3  # columns of the grid (seeds 42 + image index)


OPTIONS: list[Option] = [
    Option("output_dir", str, str(REPO / "demo_output"), "where every stage writes (default: ./demo_output)",
           group=None),
    Option("rows", int, 1000, "rows of sample metadata; 6 in 10 pass the filter (default: 1000)", group=None),
    Option("vae_steps", int, VAE_STEPS, f"training steps of the tiny autoencoder (default: {VAE_STEPS})", group=None),
    Option("train_steps", int, UNET_STEPS, f"training steps of the tiny UNet (default: {UNET_STEPS})", group=None),
    Option("sample_steps", int, 20, "sampler steps for the final images (default: 20)", group=None),
    Option("fresh", bool, False, "delete --output_dir first and redo every stage", action="store_true", group=None),
]
PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    return options_parser(OPTIONS, __doc__, **PARSER)


def parse_args(argv=None) -> argparse.Namespace:
    """Flags, or a --config yaml of them (flags win), as every tool of the project."""
    return resolve_config(OPTIONS, argv, __doc__, **PARSER)


class Stages:
    """Runs stages in order, printing a banner and timing for each; skips those already done."""

    def __init__(self, out: Path, total: int):
        self.out, self.total, self.index = out, total, 0
        self.done_dir = out / ".done"
        self.done_dir.mkdir(parents=True, exist_ok=True)

    def is_done(self, name: str) -> bool:
        return (self.done_dir / name).exists()

    def run(self, name: str, title: str, fn) -> None:
        self.index += 1
        banner = f"[{self.index}/{self.total}] {title}"
        if self.is_done(name):
            print(f"{banner}: done in an earlier run, reused", flush=True)
            return
        print(f"{banner} ...", flush=True)
        start = time.time()
        fn()
        (self.done_dir / name).write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
        print(f"{banner}: finished in {time.time() - start:.1f} s", flush=True)

    def invalidate_from(self, names: list[str]) -> None:
        for name in names:
            (self.done_dir / name).unlink(missing_ok=True)


def sh(cmd: list[str], **kwargs) -> None:
    """Run one pipeline command, showing it; its own progress bars stream to the console."""
    print("  $ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO, **kwargs)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    py = sys.executable
    paths = {
        "sample": out / "sample", "metadata": out / "metadata_raw", "filtered": out / "metadata_filtered",
        "data": out / "image_text_data", "vae": out / "vae", "latents": out / "latents", "train": out / "train",
        "samples": out / "samples",
        "score": out / "score_samples",
    }
    stage_names = ["sample", "metadata", "filter", "images", "stats", "vae", "latents", "check", "train", "generate",
                   "score", "report"]
    stages = Stages(out, total=len(stage_names))

    with serve_directory(out) as base_url:
        sample_url = f"{base_url}/sample"
        recorded = paths["sample"] / "base_url.txt"
        if stages.is_done("sample") and not stages.is_done("images") and recorded.read_text() != sample_url:
            # The images are not downloaded yet and the server port changed: the URLs must be made anew.
            stages.invalidate_from(stage_names)
        stages.run("sample", f"make {args.rows} sample rows and their images", lambda: (
            make_sample(paths["sample"], args.rows, sample_url), recorded.write_text(sample_url)))
        stages.run("metadata", "download the metadata from the local server", lambda: sh([
            py, TOOLS / "laion_download_metadata.py", "--subset", "improved_aesthetics_4.5plus",
            "--base_url", f"{sample_url}/metadata", "--parts", "1-2", "--output_dir", paths["metadata"]]))
        stages.run("filter", "filter the metadata (seed 001 conditions)", lambda: sh([
            py, TOOLS / "laion_filter_metadata.py", "--data_dir", paths["metadata"],
            "--output_dir", paths["filtered"], "--num_parts", "1", "--shuffle", "--overwrite"]))
        stages.run("images", "download the images into webdataset shards", lambda: sh([
            "bash", TOOLS / "laion_download_imgs.sh", "1", "--metadata_dir", paths["filtered"],
            "--output_dir", paths["data"], "--image_size", "32", "--processes_count", "1",
            "--thread_count", "8", "--number_sample_per_shard", "100"]))
    stages.run("stats", "write the stats csv", lambda: sh([py, TOOLS / "laion_gen_data_stats.py", "--data_dir", paths["data"]]))
    tiny_recipe = [py, EXAMPLES / "train_text_to_image.py", "--config", REPO / "configs" / "train" / "tiny_cpu.yaml"]
    stages.run("vae", f"train the tiny autoencoder for {args.vae_steps} steps on CPU", lambda: sh([
        *tiny_recipe, "--dataset_type", "webdataset", "--data_path", paths["data"], "--train_target", "vae",
        "--model_config", demo_base_config(out / "demo_base_model.yaml"),
        "--output_dir", paths["vae"], "--max_train_steps", str(args.vae_steps), *VAE_RECIPE]))
    model_config = out / "demo_model_config.yaml"
    stages.run("latents", "cache the autoencoder's latents of every image", lambda: sh([
        py, EXAMPLES / "encode_latents.py", "--data_path", paths["data"], "--output_dir", paths["latents"],
        "--model_config", demo_model_config(paths["vae"], model_config), "--pretrained_model_path",
        paths["vae"] / "model.ckpt", "--resolution", "32", "--dtype", "fp32", "--batch_size", "64"]))
    stages.run("check", "check the autoencoder's colours on 256 cached latents", lambda: sh([
        py, DEMO / "check_autoencoder.py", "--latents_dir", paths["latents"], "--model_config", model_config,
        "--pretrained_model_path", paths["vae"] / "model.ckpt", "--output", out / "autoencoder_score.json"]))
    stages.run("train", f"train the tiny SD 2.x UNet for {args.train_steps} steps on CPU", lambda: sh([
        *tiny_recipe, "--dataset_type", "latents", "--data_path", paths["latents"],
        "--pretrained_model_path", paths["vae"] / "model.ckpt",
        "--model_config", model_config, "--output_dir", paths["train"],
        "--max_train_steps", str(args.train_steps), *UNET_RECIPE, "--validation_steps", str(args.train_steps),
        "--validation_guidance_scale", str(GUIDANCE), "--validation_prompts", *PROMPTS]))
    sampling = ["--config", paths["train"] / "model_config.yaml", "--ckpt", paths["train"] / "model.ckpt",
                "--sampler", "ddim", "--steps", str(args.sample_steps), "--guidance_scale", str(GUIDANCE)]
    stages.run("generate", "sample images from prompts", lambda: sh([
        py, EXAMPLES / "text_to_image.py", *sampling, "--prompt_file", write_prompts(out / "prompts.txt", PROMPTS),
        "--n_samples", str(SAMPLES_PER_PROMPT), "--output_dir", paths["samples"]]))
    stages.run("score", "score 16 other prompts x 2 samples", lambda: (sh([
        py, EXAMPLES / "text_to_image.py", *sampling, "--n_samples", "2", "--seed", str(SCORE_SEED), "--skip_grid",
        "--prompt_file", write_prompts(out / "score_prompts.txt", score_prompts()),
        "--output_dir", paths["score"]]), write_score(
            paths["score"] / "samples", out / "prompt_score.json", out / "score_grid.png",
            settings={"seed": SCORE_SEED, "samples_per_prompt": 2, "sampler": "ddim", "steps": args.sample_steps,
                      "guidance_scale": GUIDANCE})))
    stages.run("report", "plot the loss curves", lambda: plot_loss(paths["vae"], paths["train"], out / "loss_curve.png"))
    print_summary(out, paths)
    return 0


def demo_base_config(path: Path) -> Path:
    """The tiny model config with the demo's wider UNet (DEMO_UNET), written to ``path``. The autoencoder stage
    builds the whole model from it, so its checkpoint holds the UNet (random, untrained) the UNet stage starts
    from."""
    import yaml

    from mindone.models.config import load_model_config

    cfg = load_model_config("tiny")
    cfg["model"]["unet"].update(DEMO_UNET)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def demo_model_config(vae_dir: Path, path: Path) -> Path:
    """The autoencoder run's model config (with its measured scale_factor), switched to v-prediction on a
    zero-terminal-SNR schedule, written to ``path``."""
    import yaml

    cfg = yaml.safe_load((vae_dir / "model_config.yaml").read_text())
    path.write_text(yaml.safe_dump(dict(cfg, parameterization="v", zero_terminal_snr=True), sort_keys=False))
    return path


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(prompts) + "\n")
    return path


def plot_loss(vae_dir: Path, train_dir: Path, target: Path) -> None:
    """Both training curves side by side: the autoencoder's reconstruction loss and the UNet's diffusion loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mindone.train.metrics import read_metrics

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, run, title in ((axes[0], vae_dir, "autoencoder: L1 + KL"), (axes[1], train_dir, "UNet: MSE on v (v-prediction)")):
        rows = read_metrics(run / "metrics.csv")
        steps = [int(r["step"]) for r in rows]
        losses = [float(r["loss"]) for r in rows]
        window = max(1, len(losses) // 20)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
        ax.plot(steps, smooth, lw=2, label=f"moving mean ({window})")
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title(title), ax.legend()
    fig.suptitle("tiny SD 2.x on the demo sample")
    fig.tight_layout()
    fig.savefig(target, dpi=120)


def print_summary(out: Path, paths: dict) -> None:
    report = paths["filtered"] / "filter_report.json"
    print("\nDemo finished. Where everything is:")
    if report.exists():
        rep = json.loads(report.read_text())
        print(f"  filter report        {report}  (rows in {rep['rows_in']}, rows out {rep['rows_out']})")
    check = out / "autoencoder_score.json"
    if check.exists():
        result = json.loads(check.read_text())
        print(f"  autoencoder check    {check}\n    reconstructions: {summary_line(result)}")
        if min(result["centre_colour"], result["border_colour"]) < AUTOENCODER_MIN:
            print(f"    below {AUTOENCODER_MIN}: the autoencoder confuses colours, so the model draws them wrong too; "
                  "rerun with more --vae_steps and --fresh")
    score = out / "prompt_score.json"
    if score.exists():
        print(f"  prompt score         {score}\n    {summary_line(json.loads(score.read_text()))}")
    for label, path in [("raw metadata", paths["metadata"]), ("filtered metadata", paths["filtered"]),
                        ("webdataset shards", paths["data"]), ("autoencoder run", paths["vae"]),
                        ("cached latents", paths["latents"]), ("UNet training run", paths["train"]),
                        ("sample images", paths["samples"] / "samples"), ("sample grid", paths["samples"] / "grid-0000.png"),
                        ("reconstructions", out / "autoencoder_score.png"),
                        ("scored samples", out / "score_grid.png"), ("loss curve", out / "loss_curve.png")]:
        print(f"  {label:<20} {path}")


def cli(argv=None) -> int:
    try:
        return main(argv)
    except subprocess.CalledProcessError as err:
        # The failing tool has already printed its own one-line error above.
        print(f"demo: stage command failed with exit status {err.returncode}; fix the cause and rerun "
              "(finished stages are reused)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    run_main(cli)
