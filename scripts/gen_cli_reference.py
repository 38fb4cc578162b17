#!/usr/bin/env python
"""Write docs/cli_reference.md: every flag of every command-line tool, read from the tools' own parsers.

    .venv/bin/python scripts/gen_cli_reference.py           # rewrite the file
    .venv/bin/python scripts/gen_cli_reference.py --check   # exit 1 if the file is out of date

The tests run ``--check``, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "cli_reference.md"

# (command as a user types it, script file, how to get its parser)
TOOLS = [
    ("python tools/laion_data_utils/laion_download_metadata.py", "tools/laion_data_utils/laion_download_metadata.py",
     "build_parser"),
    ("python tools/laion_data_utils/laion_filter_metadata.py", "tools/laion_data_utils/laion_filter_metadata.py",
     "build_parser"),
    ("bash tools/laion_data_utils/laion_download_imgs.sh PARTS", "tools/laion_data_utils/laion_download_imgs.py",
     "build_parser"),
    ("python tools/laion_data_utils/laion_gen_data_stats.py", "tools/laion_data_utils/laion_gen_data_stats.py",
     "build_parser"),
    ("python tools/laion_data_utils/laion_gen_csv_annot.py", "tools/laion_data_utils/laion_gen_csv_annot.py",
     "build_parser"),
    ("python tools/laion_data_utils/laion_find_near_dups.py", "tools/laion_data_utils/laion_find_near_dups.py",
     "build_parser"),
    ("python tools/laion_data_utils/make_dataset_from_images.py",
     "tools/laion_data_utils/make_dataset_from_images.py", "build_parser"),
    ("python tools/model_conversion/convert_weights.py", "tools/model_conversion/convert_weights.py", "build_parser"),
    ("python examples/stable_diffusion_v2/encode_latents.py", "examples/stable_diffusion_v2/encode_latents.py",
     "build_parser"),
    ("python examples/stable_diffusion_v2/train_text_to_image.py", None, "train"),
    ("python examples/stable_diffusion_v2/text_to_image.py", "examples/stable_diffusion_v2/text_to_image.py",
     "build_parser"),
    ("bash scripts/demo.sh", "examples/demo/run_demo.py", "build_parser"),
    ("python examples/demo/check_autoencoder.py", "examples/demo/check_autoencoder.py", "build_parser"),
]

HEADER = """# Command-line reference

Every flag of every tool, generated from the tools' own parsers by `scripts/gen_cli_reference.py`
(a test fails when this file is out of date). Each tool also prints this with `--help`.
`laion_download_imgs.sh` reads every flag from an environment variable too (`LAION_<FLAG>`), and forwards
any img2dataset option given after `--`. The msrun launcher's own flags are listed at the end.
"""

LAUNCHER = """## bash scripts/run_train_distributed.sh

Launches `train_text_to_image.py` under `msrun` (one process per device). Launcher flags come first (or
from the environment variable in brackets); everything else, or everything after `--`, goes to the
training script.

| flag | default | meaning |
|---|---|---|
| `--worker_num` (`WORKER_NUM`) | `8` | processes over all nodes |
| `--local_worker_num` (`LOCAL_WORKER_NUM`) | `--worker_num` | processes on this node |
| `--master_addr` (`MASTER_ADDR`) | `127.0.0.1` | address of the node with node_rank 0 |
| `--master_port` (`MASTER_PORT`) | `8118` | scheduler port on the master node |
| `--node_rank` (`NODE_RANK`) | `0` | this node's index |
| `--log_dir` (`LOG_DIR`) | `output/msrun_logs` | msrun's per-worker logs (`worker_<i>.log`) |

`bash scripts/run_train_standalone.sh [flags]` runs the training script on one device with the same flags.
"""


def load_parser(script: str | None, how: str) -> argparse.ArgumentParser:
    if how == "train":
        from mindone.train.options import TRAIN_OPTIONS
        from mindone.utils.config import build_parser

        return build_parser(TRAIN_OPTIONS, "", prog="train_text_to_image.py")
    path = REPO / script
    spec = importlib.util.spec_from_file_location(f"_cli_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, how)()


# Defaults computed from the machine or the checkout: shown as what they mean, so the file is the same anywhere.
MACHINE_DEFAULTS = {"--processes_count": "CPU count", "--thread_count": "32 per CPU, at most 256"}


def cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def describe(action: argparse.Action) -> tuple[str, str, str]:
    flags = ", ".join(f"`{f}`" for f in action.option_strings) if action.option_strings else f"`{action.dest}`"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # noqa: SLF001
        default = "off" if isinstance(action, argparse._StoreTrueAction) else "on"  # noqa: SLF001
    elif action.default is None or action.default == argparse.SUPPRESS:
        default = ""
    elif isinstance(action.default, (list, tuple)):
        default = " ".join(map(str, action.default)) or "(none)"
    else:
        default = str(action.default)
    meaning = (action.help or "").replace("%(default)s", default)
    if action.option_strings and action.option_strings[0] in MACHINE_DEFAULTS:
        default = MACHINE_DEFAULTS[action.option_strings[0]]
        meaning = meaning.split(" (default:")[0]
    default = default.replace(str(REPO) + "/", "./")
    for echo in (f" (default: {action.default})", f"; default: {action.default}", f"; default {action.default}"):
        meaning = meaning.replace(echo, "")  # the default has its own column
    if action.choices:
        meaning += f" (one of: {', '.join(map(str, action.choices))})"
    return flags, f"`{cell(default)}`" if default else "", cell(meaning)


def render() -> str:
    out = [HEADER]
    for command, script, how in TOOLS:
        parser = load_parser(script, how)
        out.append(f"## {command}\n")
        if parser.description:
            out.append(cell(parser.description.strip().split("\n\n")[0]) + "\n")
        out.append("| flag | default | meaning |\n|---|---|---|")
        for action in parser._actions:  # noqa: SLF001  (argparse has no public iterator)
            if isinstance(action, argparse._HelpAction):  # noqa: SLF001
                continue
            out.append("| {} | {} | {} |".format(*describe(action)))
        out.append("")
    out.append(LAUNCHER)
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is out of date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(REPO)} is out of date: run python scripts/gen_cli_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    tmp = TARGET.with_name(f".{TARGET.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(TARGET)
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
