"""One filter vocabulary: the metadata filter, the stats-time filters and the load-time filters read the same
names, columns, operators and old names (mindone/data/filter_vocab.py)."""

from __future__ import annotations

import argparse
import dataclasses

import pyarrow as pa
import pytest
import yaml

from mindone.data.filter_vocab import (COLUMN_ALIASES, FILTERS, LISTED, METADATA_FILTERS, SAMPLE_FILTERS, SAMPLE_ID,
                                       SIZE, THRESHOLDS, canonical_names, json_keys, lookup)
from mindone.data.filters import SampleFilters
from mindone.errors import ConfigError
from mindone.laion.conditions import build_conditions
from mindone.laion.filter_common import FilterPlan
from mindone.laion.sample_filters import filters_from_args
from mindone.laion.schema import ALIASES, resolve_column
from mindone.train.options import DATA_FILTERS, TRAIN_OPTIONS
from mindone.utils.config import resolve_config, save_config
from tests.helpers.tools import load_tool

OLD_NAMES = {"max_watermark": "max_pwatermark"}  # names the tools used before issue 12


def metadata_parser() -> argparse.ArgumentParser:
    return load_tool("laion_filter_metadata").build_parser()


def stats_parsers() -> list[argparse.ArgumentParser]:
    return [load_tool("laion_gen_data_stats").build_parser(), load_tool("laion_gen_csv_annot").build_parser()]


def train(argv):
    return resolve_config(TRAIN_OPTIONS, argv, "test")


def flags_of(parser: argparse.ArgumentParser, dest: str) -> set[str]:
    return {s for a in parser._actions if a.dest == dest for s in a.option_strings}  # noqa: SLF001


def test_the_table_is_consistent():
    names = [s.name for s in FILTERS] + [a for s in FILTERS for a in s.aliases]
    assert len(names) == len(set(names)), "a name or alias used twice"
    for spec in FILTERS:
        assert spec.name.startswith("min_") == spec.op.endswith(">=")
        assert spec.name.startswith("max_") == spec.op.endswith("<=")
        assert spec.column in COLUMN_ALIASES or spec.column == SIZE or (spec.column, spec.op) == (SAMPLE_ID, LISTED)
    assert all(s.metadata_keep for s in METADATA_FILTERS) and all(s.sample_help and s.load_help for s in SAMPLE_FILTERS)
    assert all(s.op in (">=", "<=") for s in THRESHOLDS)
    assert [s.name for s in SAMPLE_FILTERS if s not in THRESHOLDS] == ["drop_list"]
    assert ALIASES is COLUMN_ALIASES  # the metadata filter's column resolution reads the vocabulary's aliases
    assert {lookup(old).name for old in OLD_NAMES} == set(OLD_NAMES.values())


@pytest.mark.parametrize("spec", METADATA_FILTERS, ids=lambda s: s.name)
def test_metadata_filter_reads_the_vocabulary(spec):
    parser = metadata_parser()
    assert flags_of(parser, spec.name) == {f"--{n}" for n in (spec.name, *spec.aliases)}
    value = "en" if spec.op == "in" else "7"
    for flag in (spec.name, *spec.aliases):
        args = vars(parser.parse_args([f"--{flag}", value]))
        cond = [c for c in build_conditions(args) if c.logical == spec.column and c.op == spec.op]
        assert len(cond) == 1, flag


@pytest.mark.parametrize("spec", THRESHOLDS, ids=lambda s: s.name)
def test_stats_and_load_time_filters_read_the_vocabulary(spec):
    flags = {n: 5.0 for n in (spec.name, *spec.aliases)}
    for parser in stats_parsers():
        assert flags_of(parser, spec.name) == {f"--{n}" for n in flags}
        for flag in flags:
            args = parser.parse_args(["--data_dir", "d", f"--{flag}", "5"])
            assert filters_from_args(args) == SampleFilters(**{spec.name: 5.0})
    option = next(o for o in TRAIN_OPTIONS if o.name == f"filter_{spec.name}")
    assert option.aliases == tuple(f"filter_{a}" for a in spec.aliases)
    assert (spec.name, spec.load_help) in DATA_FILTERS
    for flag in flags:
        assert getattr(train([f"--filter_{flag}", "5"]), f"filter_{spec.name}") == 5.0
        assert SampleFilters.from_config({flag: 5}) == SampleFilters(**{spec.name: 5.0})


def test_the_drop_list_filter_reads_the_vocabulary(tmp_path):
    listed = tmp_path / "drop.txt"
    listed.write_text("# comment\npart_1/00000/000000001\n")
    for parser in stats_parsers():
        args = parser.parse_args(["--data_dir", "d", "--drop_list", str(listed)])
        assert filters_from_args(args) == SampleFilters(drop_list=str(listed))
    assert train(["--filter_drop_list", str(listed)]).filter_drop_list == str(listed)
    assert ("drop_list", lookup("drop_list").load_help) in DATA_FILTERS
    flt = SampleFilters.from_config({"drop_list": listed})
    assert flt.active and not flt.needs_meta
    assert flt.check({}, {}, sample_id="part_1/00000/000000001") == "filtered_drop_list"
    assert flt.check({}, {}, sample_id="part_2/00000/000000001") is None  # the key alone is not the id
    assert flt.check({}, {}) is None  # without an id the list is not consulted (the loader checks it before)


@pytest.mark.parametrize("spec", THRESHOLDS, ids=lambda s: s.name)
def test_json_filters_judge_the_vocabulary_column_with_its_operator(spec):
    flt = SampleFilters(**{spec.name: 10.0})
    worse, better = (9.0, 11.0) if spec.op == ">=" else (11.0, 9.0)
    columns = ("width", "height") if spec.column == SIZE else (spec.column,)
    for column in columns:
        for key in json_keys(column):  # every alias of the column, as img2dataset would copy it
            others = {json_keys(c)[0]: better for c in columns if c != column}
            counts: dict[str, int] = {}
            assert flt.check({key: worse, **others}, counts) == f"filtered_{spec.name}", key
            assert flt.check({key: 10.0, **others}, counts) is None  # the threshold itself passes
            assert flt.check({key: better, **others}, counts) is None
            assert not counts
    counts = {}
    assert flt.check({"unrelated": 1}, counts) is None and counts == {f"unjudged_{spec.name}": 1}


@pytest.mark.parametrize("spec", [s for s in SAMPLE_FILTERS if s in METADATA_FILTERS], ids=lambda s: s.name)
def test_a_threshold_means_the_same_on_metadata_and_on_the_json(spec):
    # one row / sample per value: the metadata condition keeps exactly the rows the json filter keeps
    values = [5.0, 10.0, 15.0]
    (cond,) = build_conditions({n.name: None for n in METADATA_FILTERS} | {spec.name: 10.0})
    for physical in COLUMN_ALIASES[spec.column]:
        schema = pa.schema([(physical, pa.float64())])
        assert resolve_column(schema, spec.column) == physical
        kept_rows = cond.numpy_mask(pa.array(values)).tolist()
        kept_json = [SampleFilters(**{spec.name: 10.0}).check({physical: v}, {}) is None for v in values]
        assert kept_rows == kept_json, physical


def test_old_names_in_yaml_configs(tmp_path):
    # trainer: an old key loads, is saved under the new name, and the two together are refused
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"filter_max_watermark": 0.8}))
    args = train(["--config", str(old)])
    assert args.filter_max_pwatermark == 0.8
    saved = yaml.safe_load(save_config(args, TRAIN_OPTIONS, tmp_path / "out" / "config.yaml").read_text())
    assert saved["filter_max_pwatermark"] == 0.8 and "filter_max_watermark" not in saved
    assert train(["--config", str(old), "--filter_max_pwatermark", "0.5"]).filter_max_pwatermark == 0.5
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"filter_max_watermark": 0.8, "filter_max_pwatermark": 0.7}))
    with pytest.raises(ConfigError, match="are one option"):
        train(["--config", str(both)])
    # metadata filter: the same
    cli = load_tool("laion_filter_metadata")
    meta = tmp_path / "meta.yaml"
    meta.write_text(yaml.safe_dump({"max_watermark": 0.8}))
    assert cli.parse_options(["--config", str(meta), "--data_dir", "d", "--output_dir", "o"]).max_pwatermark == 0.8
    meta.write_text(yaml.safe_dump({"max_watermark": 0.8, "max_pwatermark": 0.7}))
    with pytest.raises(ConfigError, match="are one option"):  # the option registry's words, as for the trainer
        cli.parse_options(["--config", str(meta), "--data_dir", "d", "--output_dir", "o"])
    # loader filters dict
    with pytest.raises(ConfigError, match="one setting"):
        SampleFilters.from_config({"max_watermark": 0.8, "max_pwatermark": 0.7})


def test_canonical_names_leave_other_keys_alone():
    assert canonical_names({"max_watermark": 1, "seed": 2}) == {"max_pwatermark": 1, "seed": 2}
    assert canonical_names({"filter_max_watermark": 1, "max_watermark": 2}, prefix="filter_") == {
        "filter_max_pwatermark": 1, "max_watermark": 2}
    assert lookup("seed") is None


def test_filter_plan_takes_keywords_only():
    assert all(f.kw_only for f in dataclasses.fields(FilterPlan))
    with pytest.raises(TypeError):
        FilterPlan([], [], pa.schema([]))  # noqa: the point: a positional plan is refused
    plan = FilterPlan(inputs=[], conditions=[], output_schema=pa.schema([]), num_parts=3, rows_per_part=None)
    assert (plan.num_parts, plan.batch_rows, plan.bucket_mb) == (3, 65_536, 256)
