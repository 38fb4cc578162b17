"""The option registry (mindone.utils.config) for every CLI: switches, positional and required arguments,
environment variables, the yaml flag's name, and the tools that declare their flags through it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mindone.errors import ConfigError
from mindone.utils.config import Option, build_parser, resolve_config

REPO = Path(__file__).resolve().parent.parent

OPTIONS = [
    Option("parts", str, None, "part ids", multiple=True, positional=True, group=None, env="T_PARTS"),
    Option("data_dir", str, None, "input folder", required=True, group=None, env="T_DATA_DIR"),
    Option("size", int, 512, "image size", env="T_SIZE"),
    Option("mode", str, "a", "mode", choices=("a", "b"), env="T_MODE"),
    Option("shuffle", bool, False, "shuffle", action="store_true", group="output"),
    Option("resume", bool, True, "resume", action="boolean_optional", env="T_RESUME"),
    Option("verbose", bool, False, "debug logging", action="store_true", short="-v"),
    Option("max_pwatermark", float, None, "watermark", aliases=("max_watermark",)),
]


def resolve(argv, env=None, **kw):
    return resolve_config(OPTIONS, argv, "test", environ=env or {}, **kw)


def write(tmp_path, content, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    return path


def test_switches_positionals_short_flags_and_aliases():
    args = resolve(["1", "2", "--data_dir", "d", "--shuffle", "--no-resume", "-v", "--max_watermark", "0.5"])
    assert args.parts == ["1", "2"] and args.data_dir == "d" and args.size == 512
    assert args.shuffle is True and args.resume is False and args.verbose is True and args.max_pwatermark == 0.5
    args = resolve(["--data_dir", "d"])
    assert args.parts == [] and args.shuffle is False and args.resume is True and args.verbose is False


def test_the_parser_is_what_argparse_would_build():
    parser = build_parser(OPTIONS, "test", formatter_class=argparse.RawDescriptionHelpFormatter)
    by_dest = {a.dest: a for a in parser._actions}  # noqa: SLF001
    assert isinstance(by_dest["shuffle"], argparse._StoreTrueAction)  # noqa: SLF001  ("off" in the reference)
    assert isinstance(by_dest["resume"], argparse.BooleanOptionalAction)
    assert by_dest["resume"].option_strings == ["--resume", "--no-resume"]
    assert by_dest["verbose"].option_strings == ["-v", "--verbose"]
    assert by_dest["parts"].option_strings == [] and by_dest["parts"].nargs == "*"
    assert by_dest["data_dir"].required and not by_dest["size"].required
    # the variables an option reads are in its help: nothing is read that --help does not show
    assert by_dest["size"].help == "image size [T_SIZE]" and by_dest["resume"].help == "resume [T_RESUME=1|0]"
    assert by_dest["config"].help == "yaml file of defaults; flags given here override it"


def test_yaml_sets_switches_positionals_and_required_options(tmp_path):
    cfg = write(tmp_path, {"parts": [1, 3], "data_dir": "d", "shuffle": True, "resume": False, "verbose": "yes"})
    args = resolve(["--config", str(cfg)])  # --data_dir is required, and the yaml gives it
    assert args.parts == ["1", "3"] and args.data_dir == "d"
    assert args.shuffle is True and args.resume is False and args.verbose is True
    args = resolve(["--config", str(cfg), "7", "--resume", "--data_dir", "e"])  # flags win
    assert args.parts == ["7"] and args.resume is True and args.data_dir == "e"


def test_a_required_option_nothing_gives_is_argparses_error(capsys):
    with pytest.raises(SystemExit) as exc:
        resolve([])
    assert exc.value.code == 2 and "the following arguments are required: --data_dir" in capsys.readouterr().err


def test_precedence_default_env_yaml_flag(tmp_path):
    env = {"T_SIZE": "256", "T_MODE": "b", "T_DATA_DIR": "from_env", "T_PARTS": "1-3 5", "T_RESUME": "0"}
    args = resolve([], env)  # the environment gives the required --data_dir too
    assert (args.size, args.mode, args.data_dir, args.parts, args.resume) == (256, "b", "from_env", ["1-3", "5"], False)
    cfg = write(tmp_path, {"size": 128})
    assert resolve(["--config", str(cfg)], env).size == 128  # yaml over environment
    assert resolve(["--config", str(cfg), "--size", "64"], env).size == 64  # flag over both
    assert resolve([], {**env, "T_SIZE": ""}).size == 512  # an empty variable is unset


@pytest.mark.parametrize("variable, value, message", [
    ("T_MODE", "c", "environment variable T_MODE='c' is not one of a, b"),
    ("T_SIZE", "big", "environment variable T_SIZE='big' is not a valid int"),
    ("T_RESUME", "maybe", "environment variable T_RESUME='maybe' is not a boolean (use 1/0 or true/false)"),
])
def test_bad_variable_is_one_line_unless_something_else_wins(tmp_path, variable, value, message):
    with pytest.raises(ConfigError) as exc:
        resolve(["--data_dir", "d"], {variable: value})
    assert str(exc.value) == message
    flag = {"T_MODE": ["--mode", "a"], "T_SIZE": ["--size", "1"], "T_RESUME": ["--resume"]}[variable]
    resolve(["--data_dir", "d", *flag], {variable: value})  # the flag wins: the variable is not read
    key = variable[2:].lower()
    resolve(["--data_dir", "d", "--config", str(write(tmp_path, {key: OPTIONS_BY_NAME[key].default}))],
            {variable: value})  # so does the yaml


OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}


def test_an_option_without_env_reads_no_variable():
    assert resolve(["--data_dir", "d"], {"T_SHUFFLE": "1", "T_MAX_PWATERMARK": "x"}).shuffle is False


@pytest.mark.parametrize("content, message", [
    ({"sise": 1}, "unknown key 'sise'"),
    ({"mode": "c"}, "key 'mode': 'c' is not one of a, b"),
    ({"shuffle": "maybe"}, "key 'shuffle': expected bool"),
    ({"max_watermark": 0.5, "max_pwatermark": 0.4}, "keys 'max_pwatermark' and 'max_watermark' are one option"),
])
def test_bad_yaml_is_one_line_naming_the_file_and_key(tmp_path, content, message):
    cfg = write(tmp_path, content)
    with pytest.raises(ConfigError) as exc:
        resolve(["--config", str(cfg), "--data_dir", "d"])
    assert str(exc.value).startswith(f"--config {cfg}: ") and message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_the_yaml_flag_can_have_another_name(tmp_path):
    options = [Option("config", str, "v2-base-512-eps", "model yaml"), Option("steps", int, 50, "steps")]
    cfg = write(tmp_path, {"config": "tiny", "steps": 2})
    args = resolve_config(options, ["--options", str(cfg), "--steps", "3"], "t", config_flag="options")
    assert (args.config, args.steps, args.options) == ("tiny", 3, str(cfg))
    bad = write(tmp_path, {"stepz": 2}, "bad.yaml")
    with pytest.raises(ConfigError, match=rf"^--options {bad}: unknown key 'stepz'"):
        resolve_config(options, ["--options", str(bad)], "t", config_flag="options")


# ---- the tools: a yaml gives what the same flags give; flags win; an unknown key is one line ----

def run_cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_make_dataset_from_yaml_equals_flags(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.new("RGB", (40 + i, 30), (i * 40, 10, 10)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"caption {i}")
    script = "tools/laion_data_utils/make_dataset_from_images.py"
    flags = ["--output_format", "files", "--samples_per_shard", "2", "--part_id", "7"]
    assert run_cli(script, "--image_dir", str(images), "--output_dir", str(tmp_path / "flags"), *flags,
                   cwd=tmp_path).returncode == 0
    cfg = write(tmp_path, {"image_dir": str(images), "output_dir": str(tmp_path / "yaml"), "output_format": "files",
                           "samples_per_shard": 2, "part_id": 7})
    proc = run_cli(script, "--config", str(cfg), cwd=tmp_path)  # --image_dir / --output_dir come from the yaml
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "yaml" / "part_7.csv").read_text() == (tmp_path / "flags" / "part_7.csv").read_text()
    listing = lambda root: sorted(str(f.relative_to(root)) for f in root.rglob("*"))  # noqa: E731
    assert listing(tmp_path / "yaml") == listing(tmp_path / "flags")
    assert len([d for d in (tmp_path / "yaml" / "part_7").iterdir() if d.is_dir()]) == 3  # 5 images, 2 per shard
    # a flag wins over the yaml
    proc = run_cli(script, "--config", str(cfg), "--part_id", "8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "yaml" / "part_8.csv").is_file()
    # an unknown key: one line naming the file and the key
    bad = write(tmp_path, {"image_dir": str(images), "output_dri": "x"}, "bad.yaml")
    proc = run_cli(script, "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"make_dataset_from_images.py: error: --config {bad}: unknown key 'output_dri' (see --help for the options)"]


def test_text_to_image_options_yaml_equals_flags(tmp_path):
    """text_to_image.py's --config is the model yaml, so its options yaml is --options."""
    module = _load("examples/stable_diffusion_v2/text_to_image.py")
    flags = ["--config", "tiny", "--prompt", "a cat", "--steps", "3", "--sampler", "dpm++", "--skip_grid",
             "--allow_random_init", "--H", "64"]
    cfg = write(tmp_path, {"config": "tiny", "prompt": "a cat", "steps": 3, "sampler": "dpm++", "skip_grid": True,
                           "allow_random_init": True, "H": 64})
    from_flags, from_yaml = vars(module.parse_args(flags)), vars(module.parse_args(["--options", str(cfg)]))
    assert from_yaml.pop("options") == str(cfg) and from_flags.pop("options") is None
    assert from_yaml == from_flags
    assert module.parse_args(["--options", str(cfg), "--steps", "9", "--config", "v2-768-v"]).steps == 9
    bad = write(tmp_path, {"stepz": 3}, "bad.yaml")
    with pytest.raises(ConfigError, match=rf"^--options {bad}: unknown key 'stepz'"):
        module.parse_args(["--options", str(bad)])


def _load(script: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_cli_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLIS = ["tools/laion_data_utils/laion_filter_metadata.py", "tools/laion_data_utils/laion_download_metadata.py",
        "tools/laion_data_utils/laion_download_imgs.py", "tools/laion_data_utils/laion_gen_data_stats.py",
        "tools/laion_data_utils/laion_gen_csv_annot.py", "tools/laion_data_utils/make_dataset_from_images.py",
        "examples/stable_diffusion_v2/text_to_image.py", "examples/stable_diffusion_v2/encode_latents.py",
        "tools/model_conversion/convert_weights.py", "examples/demo/run_demo.py",
        "examples/demo/check_autoencoder.py"]


@pytest.mark.parametrize("script", CLIS, ids=lambda s: Path(s).stem)
def test_every_cli_declares_its_flags_through_the_registry(script):
    """One mechanism: each script's parser comes from its Option list, and none reads argparse internals."""
    text = (REPO / script).read_text()
    assert "_actions" not in text and "add_argument(" not in text and "ArgumentParser(" not in text
    assert "Option(" in text or "_OPTIONS" in text


def test_download_launcher_env_yaml_flag_precedence(tmp_path, monkeypatch, capsys):
    """laion_download_imgs: LAION_* < --config yaml < flags; the positional part ids from any of the three."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers.tools import load_tool

    tool = load_tool("laion_download_imgs")
    monkeypatch.setattr(tool, "setup_cli_logging", lambda: None)
    for i in (1, 2, 3):
        pq.write_table(pa.table({"URL": ["http://x/a.jpg"], "TEXT": ["a"]}), tmp_path / f"part_{i}.parquet")
    for key in [k for k in __import__("os").environ if k.startswith("LAION_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LAION_METADATA_DIR", str(tmp_path))
    monkeypatch.setenv("LAION_IMAGE_SIZE", "256")
    monkeypatch.setenv("LAION_PARTS", "1 3")
    monkeypatch.setenv("LAION_RESIZE_MODE", "border")

    def run(*argv):
        capsys.readouterr()
        assert tool.main(["--dry_run", *argv]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    cfg = write(tmp_path, {"output_dir": "/data/out", "image_size": 384, "skip_reencode": False})
    parts = run("--config", str(cfg))
    assert [p["part"] for p in parts] == [1, 3]  # LAION_PARTS, the documented "1 2 3" form
    kw = parts[0]["img2dataset"]
    assert kw["output_folder"] == "/data/out/part_1" and kw["image_size"] == 384  # yaml over LAION_IMAGE_SIZE
    assert kw["resize_mode"] == "border" and kw["skip_reencode"] is False  # the variable where the yaml is silent
    parts = run("2", "--config", str(cfg), "--image_size", "128", "--skip_reencode")
    assert [p["part"] for p in parts] == [2]
    assert parts[0]["img2dataset"]["image_size"] == 128 and parts[0]["img2dataset"]["skip_reencode"] is True
    bad = write(tmp_path, {"LAION_OUTPUT_DIR": "/x"}, "bad.yaml")  # yaml keys are the flag names
    with pytest.raises(ConfigError, match=rf"^--config {bad}: unknown key 'LAION_OUTPUT_DIR'"):
        tool.main(["--dry_run", "--config", str(bad)])
