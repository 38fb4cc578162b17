"""The docs stay true to the code: the CLI reference is generated from the parsers, README commands exist."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_cli_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_cli_reference.py"), "--check"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cli_reference_lists_every_training_flag():
    from mindone.train.options import TRAIN_OPTIONS

    text = (REPO / "docs" / "cli_reference.md").read_text()
    missing = [o.name for o in TRAIN_OPTIONS if f"`--{o.name}`" not in text]
    assert not missing


DOCS_WITH_COMMANDS = ["README.md", "examples/stable_diffusion_v2/README.md", "docs/data_preparation.md",
                      "docs/models_and_inference.md", "docs/training.md", "docs/near_duplicates.md"]
# Scripts whose extra flags are the training script's.
TRAIN_LAUNCHERS = {"scripts/run_train_standalone.sh", "scripts/run_train_distributed.sh"}
LAUNCHER_FLAGS = {"--worker_num", "--local_worker_num", "--master_addr", "--master_port", "--node_rank", "--log_dir"}
PASS_THROUGH = {"scripts/test.sh"}  # its arguments go to pytest
SCRIPT_FOR_COMMAND = {"tools/laion_data_utils/laion_download_imgs.sh": "tools/laion_data_utils/laion_download_imgs.py",
                      "scripts/demo.sh": "examples/demo/run_demo.py"}


def shell_commands(markdown: str) -> list[str]:
    """The commands in the ```bash / ```shell blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```(?:bash|shell|sh)\n(.*?)```", markdown, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def parser_flags(script: str) -> set[str]:
    """Every option string the tool's parser accepts, read through the CLI reference generator."""
    load_parser = runpy.run_path(str(REPO / "scripts" / "gen_cli_reference.py"))["load_parser"]
    if script == "examples/stable_diffusion_v2/train_text_to_image.py":
        parser = load_parser(None, "train")
    else:
        parser = load_parser(script, "build_parser")
    return {s for action in parser._actions for s in action.option_strings}  # noqa: SLF001


def test_documented_commands_name_real_scripts_and_flags():
    checked, problems = 0, []
    for doc in DOCS_WITH_COMMANDS:
        for command in shell_commands((REPO / doc).read_text()):
            # a command may sit behind `for ...; do` or `export ...;`
            for m in re.finditer(r"(?:python|bash)\s+((?:tools|examples|scripts)/\S+\.(?:py|sh))(.*?)(?:;|$)", command):
                script, rest = m.group(1), m.group(2)
                if not (REPO / script).is_file():
                    problems.append(f"{doc}: {script} does not exist")
                    continue
                tool_args = rest.split(" -- ")[0] if script not in TRAIN_LAUNCHERS else rest.replace(" -- ", " ")
                flags = set(re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", tool_args))
                target = SCRIPT_FOR_COMMAND.get(script, script)
                if target.endswith(".sh") and (REPO / target).with_suffix(".py").is_file():
                    target = target[:-3] + ".py"  # a shell wrapper of the python tool beside it
                if script in TRAIN_LAUNCHERS:
                    target = "examples/stable_diffusion_v2/train_text_to_image.py"
                if target in PASS_THROUGH:
                    checked += 1
                    continue
                known = parser_flags(target) | (LAUNCHER_FLAGS if script in TRAIN_LAUNCHERS else set())
                problems += [f"{doc}: {script} has no flag {f}" for f in sorted(flags - known)]
                checked += 1
    assert checked >= 30, f"only {checked} documented commands found"
    assert not problems, "\n".join(problems)
