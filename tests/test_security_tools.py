"""Issue 17, tools side: data (shards, metadata, sidecars, server answers) never runs code, never makes a
tool read or write outside the places the user named, and never hangs it.

Every malicious input is built here byte by byte (tarfile output patched with the header checksum fixed
again where the attack needs a header that passes it).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mindone.laion.shard_state import prepare_resume
from mindone.laion.tar_stats import MAX_EXTENDED_HEADER, TarFormatError, iter_tar_members, scan_tar
from tests.helpers.tars import tar_bytes, webdataset_shard, write

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools" / "laion_data_utils"


def fix_checksum(data: bytearray, header_at: int) -> None:
    """Store the right checksum in the header at ``header_at`` (as tarfile writes it: 6 digits, NUL, space)."""
    header = data[header_at : header_at + 512]
    total = sum(header[:148]) + 8 * 32 + sum(header[156:])
    data[header_at + 148 : header_at + 156] = b"%06o\0 " % total


def patch_header(data: bytes, header_at: int, field_at: int, value: bytes, checksum: bool = True) -> bytes:
    patched = bytearray(data)
    patched[header_at + field_at : header_at + field_at + len(value)] = value
    if checksum:
        fix_checksum(patched, header_at)
    return bytes(patched)


SAMPLE = [("000000000.jpg", b"\xff\xd8" + bytes(700)), ("000000000.txt", b"a cat"), ("000000001.jpg", b"\xff\xd8" + bytes(10))]
SIZE_FIELD = 124
SECOND_HEADER = 512 + 1024  # after the first header and its 702 bytes of data (two blocks)


def pax_tar(records: bytes) -> bytes:
    """A tar whose first member is a pax header holding ``records`` (checksum fixed), then SAMPLE."""
    header = bytearray(tarfile.TarInfo("././@PaxHeader").tobuf(tarfile.USTAR_FORMAT))
    header[156:157] = b"x"
    header[SIZE_FIELD : SIZE_FIELD + 12] = b"%011o\0" % len(records)
    fix_checksum(header, 0)
    payload = records + bytes(-len(records) % 512)
    return bytes(header) + payload + tar_bytes(SAMPLE)


# -- 1. the header scanner: checksums, sizes, pax records; it always ends ----------------------------------------


@pytest.mark.timeout(10)
def test_scan_of_a_good_tar_is_unchanged(tmp_path):
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        scan = scan_tar(write(tmp_path, tar_bytes(SAMPLE, fmt)))
        assert scan.ok and (scan.num_samples, scan.num_images, scan.missing_caption) == (1, 2, 1), (fmt, scan)


@pytest.mark.timeout(10)
def test_scan_groups_odd_names_as_the_sample_contract_does(tmp_path):
    from mindone.data.wds_sample import IMAGE_EXTS, group_members, is_sample

    names = [".hidden.jpg", ".hidden.txt", "x.", "x.JPG", "noext", "a.b.jpg", "a.b.txt", "d/.jpg", "d/k.jpg", "d/k.txt",
             "d.e/k.jpg", "k.txt", "k.Jpeg"]  # fmt: skip
    groups = [set(exts) for _, exts in group_members((n,) for n in names)]
    samples = sum(1 for exts in groups if is_sample(exts))
    scan = scan_tar(write(tmp_path, tar_bytes([(n, b"") for n in names])))
    assert (scan.num_samples, scan.num_images) == (samples, sum(1 for e in groups if e & set(IMAGE_EXTS))) == (2, 4)


@pytest.mark.timeout(10)
def test_ustar_header_with_a_bad_checksum_is_refused(tmp_path):
    data = patch_header(tar_bytes(SAMPLE), SECOND_HEADER, 0, b"X", checksum=False)  # name changed, checksum not
    scan = scan_tar(write(tmp_path, data))
    assert not scan.ok and f"bad header at byte {SECOND_HEADER}" in scan.error and "checksum" in scan.error


@pytest.mark.timeout(10)
@pytest.mark.parametrize("size_field", [b"-0000001000", b"0o000000017", b"0000_000017", b"00000000019", b"\xff" * 12],
                         ids=["negative", "0o-prefix", "underscore", "not-octal", "negative-base256"])
def test_bad_size_fields_are_refused_without_hanging(tmp_path, size_field):
    data = patch_header(tar_bytes(SAMPLE), SECOND_HEADER, SIZE_FIELD, size_field)
    scan = scan_tar(write(tmp_path, data))
    assert not scan.ok and f"bad header at byte {SECOND_HEADER}" in scan.error


@pytest.mark.timeout(10)
def test_the_reported_two_kilobyte_tar_no_longer_hangs(tmp_path):
    """The reviewer's file: "ustar" magic, checksum left wrong, size -512: the old scanner looped on it."""
    data = patch_header(tar_bytes(SAMPLE[:1]), 0, SIZE_FIELD, b"-0000001000", checksum=False)[:2048]
    assert data[1536:] == bytes(512)  # header, 702 bytes of data in two blocks, an end-of-archive block
    scan = scan_tar(write(tmp_path, data))
    assert not scan.ok and "bad header at byte 0" in scan.error


@pytest.mark.timeout(10)
def test_base256_sizes(tmp_path):
    good = tar_bytes(SAMPLE)
    positive = patch_header(good, SECOND_HEADER, SIZE_FIELD, b"\x80" + (5).to_bytes(11, "big"))  # a.txt: 5 bytes
    assert scan_tar(write(tmp_path, positive)).num_samples == scan_tar(write(tmp_path, good, "g.tar")).num_samples == 1
    beyond = patch_header(good, SECOND_HEADER, SIZE_FIELD, b"\x80" + (1 << 40).to_bytes(11, "big"))
    scan = scan_tar(write(tmp_path, beyond))
    assert not scan.ok and "truncated" in scan.error  # a member larger than the file


@pytest.mark.timeout(10)
@pytest.mark.parametrize("records", [b"0 path=x\n", b"3 a=\n", b"99 path=x\n", b"12 path=abc!", b"x path=abc\n",
                                     b"10 pathabc\n", b"14 size=-1000\n"],
                         ids=["length-0", "shorter-than-prefix", "past-the-end", "no-newline", "no-length", "no-equals",
                              "negative-size"])  # fmt: skip
def test_malformed_pax_records_are_refused_without_hanging(tmp_path, records):
    scan = scan_tar(write(tmp_path, pax_tar(records)))
    assert not scan.ok and scan.error.startswith("bad header at byte ")  # the pax header or the member it sizes


@pytest.mark.timeout(10)
def test_well_formed_pax_records_still_apply(tmp_path):
    records = b"24 path=k/000000005.jpg\n12 size=702\n"
    names = [name for name, _, _ in iter_tar_members(write(tmp_path, pax_tar(records)))]
    assert names == ["k/000000005.jpg", "000000000.txt", "000000001.jpg"]


@pytest.mark.timeout(10)
def test_huge_extended_header_is_refused_unread(tmp_path):
    records = b"%d comment=%s\n" % (MAX_EXTENDED_HEADER + 8, b"x" * (MAX_EXTENDED_HEADER + 8 - 17))
    assert len(records) == MAX_EXTENDED_HEADER + 8  # a well-formed record, only too large
    scan = scan_tar(write(tmp_path, pax_tar(records)))
    assert not scan.ok and "limit" in scan.error


@pytest.mark.timeout(10)
def test_checksums_are_checked_past_the_first_batch_and_old_signed_sums_pass(tmp_path):
    members = [(f"{i:09d}.txt", b"") for i in range(1100)]
    data = tar_bytes(members)
    bad_at = 1050 * 512
    scan = scan_tar(write(tmp_path, patch_header(data, bad_at, 0, b"Q", checksum=False)))
    assert not scan.ok and f"bad header at byte {bad_at} (checksum" in scan.error
    signed = bytearray(patch_header(data, bad_at, 0, "é".encode(), checksum=False))  # bytes >= 128 in the name
    header = signed[bad_at : bad_at + 512]
    total = sum(b - 256 * (b >= 128) for b in header[:148] + header[156:]) + 8 * 32
    signed[bad_at + 148 : bad_at + 156] = b"%06o\0 " % total
    assert scan_tar(write(tmp_path, bytes(signed))).ok


@pytest.mark.timeout(10)
def test_iteration_raises_its_own_error_type(tmp_path):
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_tar_members(write(tmp_path, patch_header(tar_bytes(SAMPLE), 0, 0, b"Z", checksum=False))))


@pytest.mark.timeout(60)
def test_stats_cli_and_resume_check_report_the_crafted_shard(tmp_path):
    part = tmp_path / "data" / "part_1"
    part.mkdir(parents=True)
    write(part, pax_tar(b"0 path=x\n"))
    (part / "00000_stats.json").write_text(json.dumps({"count": 2, "successes": 2}))
    tool = str(TOOLS / "laion_gen_data_stats.py")
    proc = subprocess.run([sys.executable, tool, "--data_dir", str(tmp_path / "data"), "--strict"],
                          capture_output=True, text=True, timeout=50)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("laion_gen_data_stats.py: error: ")
    assert "part_1/00000.tar" in lines[-1] and "bad header at byte 0" in lines[-1] and "Traceback" not in proc.stderr
    report = prepare_resume(part, "webdataset")  # the downloader's resume check uses the same scanner
    assert report.invalidated == ["00000"] and not (part / "00000.tar").exists()



# -- 7. members read whole are capped; compressed shards are never inflated -------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("compress", ["gz", "xz"])
def test_compressed_shards_are_refused_not_inflated(tmp_path, compress):
    from collections import Counter

    from mindone.data.filters import SampleFilters
    from mindone.laion.shard_filter import ShardFilterError, filter_shard

    bomb = webdataset_shard(tmp_path / "part_1", "00000", [{"jpg": bytes(8 << 20), "txt": b"zeros"}], compress)
    assert bomb.stat().st_size < 64 << 10  # 8 MiB of zeros compresses to a few KiB
    assert not scan_tar(bomb).ok  # the scan reads it as the tar it is not
    dst = tmp_path / "out" / "00000.tar"
    with pytest.raises(ShardFilterError, match="not an uncompressed tar"):
        filter_shard(bomb, dst, SampleFilters(min_aesthetic=1.0), Counter())
    assert not dst.parent.exists() or not any(dst.parent.iterdir())


@pytest.mark.timeout(60)
def test_filter_caps_the_member_it_reads_whole(tmp_path):
    data, out = tmp_path / "data", tmp_path / "filtered"
    meta = json.dumps({"AESTHETIC_SCORE": 6.0}).encode()
    nested = b"[" * 100_000 + b"]" * 100_000  # deeper than json.loads goes: no metadata, no crash
    webdataset_shard(data / "part_1", "00000", [{"jpg": bytes(3 << 20), "txt": b"big", "json": meta},
                                                {"jpg": b"\xff\xd8", "txt": b"small", "json": nested}])  # fmt: skip
    tool = str(TOOLS / "laion_gen_data_stats.py")
    flags = [tool, "--data_dir", str(data), "--min_aesthetic", "5", "--filtered_output_dir", str(out)]
    proc = subprocess.run([sys.executable, *flags, "--max_member_mb", "2"], capture_output=True, text=True, timeout=50)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert lines[-1] == (f"laion_gen_data_stats.py: error: {data / 'part_1' / '00000.tar'}: member '000000000.jpg' is "
                         f"{3 << 20} bytes, over the 2 MiB cap (--max_member_mb raises it)")
    assert not (out / "part_1" / "00000.tar").exists()
    proc = subprocess.run([sys.executable, *flags, "--max_member_mb", "4"], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    # both kept: the big one passes the threshold, the unparsable json counts as no metadata (as a missing one)
    assert (out / "part_1_stats.csv").read_text().splitlines()[1:] == ["part_1/00000.tar,2"]


# -- 2. links and member names never lead a tool out of the folder it was given ----------------------------------


@pytest.mark.timeout(20)
def test_filtered_copy_drops_links_and_names_that_climb_out(tmp_path):
    from collections import Counter

    from mindone.data.filters import SampleFilters
    from mindone.laion.shard_filter import filter_shard

    src = tmp_path / "00000.tar"
    with tarfile.open(src, "w") as tar:
        for name, data in SAMPLE[:2] + [("../../evil.jpg", b"x"), ("/etc/evil.txt", b"y"), ("a/../../up.txt", b"z")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("000000002.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    dst = tmp_path / "out" / "00000.tar"
    assert filter_shard(src, dst, SampleFilters(min_aesthetic=1.0), Counter()) == (1, 1)
    with tarfile.open(dst) as tar:
        assert tar.getnames() == ["000000000.jpg", "000000000.txt"]
