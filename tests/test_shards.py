"""Sharded parity: per-image prediction files, `device merge`, and Ray (issue 15)."""
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import TINY_INT8_LIMITS, assert_exit_is_verdict
from edgecxr.cli import main
from edgecxr.data.folders import Sample, list_site
from edgecxr.parity import shards
from edgecxr.utils.errors import ConfigError, DataError

LIMITS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_INT8_LIMITS.items()]
VOLATILE = ("timing", "host", "shards")  # where and how fast: the only keys a merge may change


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def comparable(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VOLATILE}


def run_shards(bundle, data, count, folder: Path, *extra) -> list[Path]:
    files = []
    for i in range(1, count + 1):
        f = folder / f"shard-{i}.json"
        r = cli("device", "parity", bundle, "--data", data, "--shard", f"{i}/{count}", "--predictions", f, *extra)
        assert r.exit_code == 0, r.output
        files.append(f)
    return files


def fake_samples(n):
    return [Sample(Path(f"/x/{i:04d}.jpeg"), f"test/C/{i:04d}.jpeg", i % 2, str(i)) for i in range(n)]


@pytest.mark.parametrize("n,count", [(10, 1), (10, 3), (624, 3), (5, 7), (1, 2)])
def test_every_image_in_exactly_one_shard(n, count):
    samples = fake_samples(n)
    picked = [i for k in range(1, count + 1) for i, _ in shards.select(samples, k, count)]
    assert sorted(picked) == list(range(n))
    sizes = [len(shards.select(samples, k, count)) for k in range(1, count + 1)]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_assignment_independent_of_listing_order():
    """Machines that list the same files in another order still agree on which shard holds which file."""
    samples = fake_samples(50)
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    for k in (1, 2, 3):
        assert {s.rel for _, s in shards.select(samples, k, 3)} == {s.rel for _, s in shards.select(shuffled, k, 3)}


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"])
def test_bad_shard_spec(text):
    with pytest.raises(ConfigError):
        shards.parse_shard(text)
    assert shards.parse_shard("2/3") == (2, 3)


def test_three_shards_merged_equal_the_single_run(tiny_bundles, kermany, tmp_path):
    """624 real test images, reference stored in the bundle: report, verdict and JUnit equal the unsharded run's."""
    bundle = tiny_bundles["tflite-int8"]
    r = cli("device", "parity", bundle, "--data", kermany, "--json", tmp_path / "single.json",
            "--junit", tmp_path / "single.xml", *LIMITS)
    assert_exit_is_verdict(r, tmp_path / "single.json")
    files = run_shards(bundle, kermany, 3, tmp_path)
    sizes = [len(json.loads(f.read_text())["records"]) for f in files]
    assert sizes == [208, 208, 208]
    m = cli("device", "merge", *reversed(files), "--json", tmp_path / "merged.json", "--junit", tmp_path / "merged.xml",
            *LIMITS)
    assert m.exit_code == r.exit_code, m.output
    single, merged = json.loads((tmp_path / "single.json").read_text()), json.loads((tmp_path / "merged.json").read_text())
    assert single["n"] == 624 and single["data"]["reference_coverage"] == 1.0
    assert comparable(merged) == comparable(single)
    assert [s["shard"] for s in merged["shards"]] == ["1/3", "2/3", "3/3"]
    assert m.output.splitlines()[-1] == r.output.splitlines()[-1]  # parity PASSED / FAILED

    def cases(xml):
        return [line for line in xml.read_text().splitlines() if "<testcase" in line or "message" in line]

    assert cases(tmp_path / "merged.xml") == cases(tmp_path / "single.xml")


def test_gate_applied_at_merge(tiny_bundles, kermany, tmp_path):
    """The tolerances are the merge's: an impossible agreement demand fails the merged run with exit 1."""
    files = run_shards(tiny_bundles["tflite-int8"], kermany, 2, tmp_path)
    strict = cli("device", "merge", *files, "--min-agreement", "1", "--max-accuracy-drop", "0", "--max-recall-drop", "0")
    loose = cli("device", "merge", *files, "--min-agreement", "0", "--max-accuracy-drop", "1", "--max-recall-drop", "1")
    assert loose.exit_code == 0, loose.output
    single = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", kermany, "--min-agreement", "1",
                 "--max-accuracy-drop", "0", "--max-recall-drop", "0")
    assert strict.exit_code == single.exit_code  # 1 unless int8 changes no decision at all
    assert strict.output.splitlines()[-1] == single.output.splitlines()[-1]


def test_twin_reference_shards_of_a_site_folder(tiny_bundles, sample, tmp_path):
    """A site's folder (class folders, not the bundle's reference): the twin recomputes the float side per shard."""
    site = sample / "test"
    single = tmp_path / "single.json"
    r = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", site, "--json", single, *LIMITS)
    assert_exit_is_verdict(r, single)
    files = run_shards(tiny_bundles["tflite-int8"], site, 2, tmp_path)
    m = cli("device", "merge", *files, "--json", tmp_path / "merged.json", *LIMITS)
    assert m.exit_code == r.exit_code, m.output
    a, b = json.loads(single.read_text()), json.loads((tmp_path / "merged.json").read_text())
    assert a["reference"]["source"] == "twin" and a["n"] == len(list_site(site))
    assert comparable(a) == comparable(b)


@pytest.fixture(scope="module")
def three(tiny_bundles, sample, tmp_path_factory):
    return run_shards(tiny_bundles["tflite-int8"], sample, 3, tmp_path_factory.mktemp("three"), "--min-coverage", "0")


def one_error_line(result, *words):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for w in words:
        assert w in lines[0], lines[0]


def test_overlapping_shards_refused(three):
    one_error_line(cli("device", "merge", three[0], three[1], three[1], three[2]), "overlapping", "2/3")


def test_missing_shard_refused(three):
    one_error_line(cli("device", "merge", three[0], three[2]), "2/3 missing")


def test_shards_of_other_counts_refused(three, tiny_bundles, sample, tmp_path):
    other = run_shards(tiny_bundles["tflite-int8"], sample, 2, tmp_path)
    one_error_line(cli("device", "merge", three[0], three[1], other[1]), "shard.count")


def test_shards_of_different_bundles_refused(three, tiny_bundles, sample, tmp_path):
    fp16 = tmp_path / "fp16.json"
    r = cli("device", "parity", tiny_bundles["tflite-fp16"], "--data", sample, "--shard", "3/3", "--predictions", fp16)
    assert r.exit_code == 0, r.output
    one_error_line(cli("device", "merge", three[0], three[1], fp16), "bundle.", "different bundle")


def test_shards_of_different_image_lists_refused(three, tiny_bundles, sample, tmp_path):
    other = tmp_path / "other.json"
    r = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", sample, "--split", "train", "--shard", "3/3",
            "--predictions", other, "--reference", "twin")
    assert r.exit_code == 0, r.output
    one_error_line(cli("device", "merge", three[0], three[1], other), "list.sha256")


def _rewrite(path: Path, doc: dict, *, redigest: bool = True) -> Path:
    """Write an edited prediction file; redigest: as a forger would, with its digest recomputed."""
    if redigest:
        doc["digest"] = shards.digest(doc)
    path.write_text(json.dumps(doc))
    return path


def test_cut_or_edited_shards_refused(three, tmp_path):
    doc = json.loads(three[1].read_text())
    doc["records"] = doc["records"][:-1]
    one_error_line(cli("device", "merge", three[0], _rewrite(tmp_path / "c.json", doc, redigest=False), three[2]),
                   "does not match its digest", "re-run")
    one_error_line(cli("device", "merge", three[0], _rewrite(tmp_path / "cut.json", doc), three[2]), "hold", "re-run")
    doc = json.loads(three[1].read_text())
    doc["records"].append(dict(doc["records"][0], index=json.loads(three[0].read_text())["records"][0]["index"]))
    one_error_line(cli("device", "merge", three[0], _rewrite(tmp_path / "dup.json", doc), three[2]), "overlapping")


def _edit_all(three, folder: Path, edit, redigest=True) -> list[Path]:
    out = []
    for i, path in enumerate(three):
        doc = json.loads(path.read_text())
        edit(doc)
        out.append(_rewrite(folder / f"e{i}.json", doc, redigest=redigest))
    return out


def _loosen(doc):
    doc["context"]["acceptance"].update(max_recall_drop=1.0, max_accuracy_drop=1.0, min_agreement=0.0)
    for r in doc["records"]:
        if "device_prob" in r:
            r["device_prob"] = 1 - r["float_prob"]


def test_loosened_criteria_and_forged_probabilities_are_refused(three, tiny_bundles, tmp_path):
    """Issue 28.1: every shard's acceptance loosened and device_prob := 1 - float_prob."""
    naive = _edit_all(three, tmp_path, _loosen, redigest=False)
    one_error_line(cli("device", "merge", *naive), "does not match its digest")
    forged = _edit_all(three, tmp_path, _loosen)  # the digest recomputed: only the bundle's criteria show it
    one_error_line(cli("device", "merge", *forged, "--bundle", tiny_bundles["tflite-int8"]),
                   "acceptance criteria or threshold are not the bundle's")


def test_a_forged_float_reference_is_refused_given_the_bundle(three, tiny_bundles, tmp_path):
    def edit(doc):
        for r in doc["records"]:
            if "float_prob" in r:
                r["float_prob"] = r["device_prob"]
    forged = _edit_all(three, tmp_path, edit)
    one_error_line(cli("device", "merge", *forged, "--bundle", tiny_bundles["tflite-int8"]),
                   "not the bundle's reference")


@pytest.mark.parametrize("field, value", [("device_prob", float("nan")), ("device_prob", float("inf")),
                                          ("device_prob", 5.0), ("float_prob", -1.0), ("label", 2), ("label", -1),
                                          ("label", 7), ("file", "../../../../etc/passwd"), ("file", "/etc/shadow"),
                                          ("file", "x\nFAKE parity PASSED\n")])
def test_impossible_values_are_refused(three, tmp_path, field, value):
    doc = json.loads(three[1].read_text())
    doc["records"][0][field] = value
    one_error_line(cli("device", "merge", three[0], _rewrite(tmp_path / "v.json", doc), three[2]), "re-run that shard")


def test_a_record_renamed_to_another_image_is_refused(three, tmp_path):
    doc = json.loads(three[1].read_text())
    doc["records"][0]["file"] = json.loads(three[0].read_text())["records"][0]["file"]
    one_error_line(cli("device", "merge", three[0], _rewrite(tmp_path / "r.json", doc), three[2]),
                   "do not hash to the run's image list")


def test_signed_shards_merge_and_a_forger_without_the_key_is_refused(tiny_bundles, sample, tmp_path):
    from edgecxr.formats.signing import keygen

    key, public = keygen(tmp_path / "device-key")
    signed = run_shards(tiny_bundles["tflite-int8"], sample, 2, tmp_path, "--min-coverage", "0", "--signing-key", key)
    ok = cli("device", "merge", *signed, "--device-key", public, "--bundle", tiny_bundles["tflite-int8"],
             "--min-coverage", "0", *LIMITS, "--json", tmp_path / "merged.json")
    assert_exit_is_verdict(ok, tmp_path / "merged.json")
    assert "parity" in ok.output, ok.output
    doc = json.loads(signed[1].read_text())
    for r in doc["records"]:
        if "device_prob" in r:
            r["device_prob"] = r["float_prob"]  # a forger copies the float answers and recomputes the digest
    forged = _rewrite(tmp_path / "forged.json", doc)
    one_error_line(cli("device", "merge", signed[0], forged, "--device-key", public), "signature does not verify")
    (tmp_path / "unsigned").mkdir()
    unsigned = run_shards(tiny_bundles["tflite-int8"], sample, 2, tmp_path / "unsigned", "--min-coverage", "0")
    one_error_line(cli("device", "merge", *unsigned, "--device-key", public), "not signed")


def test_json_reports_never_hold_nan_tokens(tmp_path):
    from edgecxr.utils.atomic import write_json_atomic

    write_json_atomic(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("-inf")], "c": {"d": 0.5}})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == \
        {"a": None, "b": [1.0, None], "c": {"d": 0.5}}


def test_console_report_escapes_control_characters():
    from edgecxr.devices.parity import format_report

    assert shards.printable("a\nFAKE parity PASSED\x1b[0m") == "a?FAKE parity PASSED?[0m"
    assert format_report.__code__.co_names.count("printable") >= 1


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"format": "other"}', b"\xff\xfe",
                                     b'{"format": "edgecxr-predictions", "version": 1}'])
def test_bad_prediction_files_refused(three, tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    one_error_line(cli("device", "merge", three[0], bad, three[2]), str(bad))
    one_error_line(cli("device", "merge", tmp_path / "absent.json"), "no such prediction file")


def test_shard_options_checked_before_work(tiny_bundles, sample, tmp_path):
    r = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", sample, "--shard", "1/2")
    assert r.exit_code == 2 and "--predictions" in r.output
    r = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", sample, "--shard", "1/2",
            "--predictions", tmp_path / "p.json", "--json", tmp_path / "r.json")
    assert r.exit_code == 2 and "device merge" in r.output
    assert not (tmp_path / "p.json").exists()


def test_merge_needs_data_error_types(three):
    with pytest.raises(DataError):
        shards.merge([three[0]])


def test_ray_equals_single_process(tiny_bundles, kermany):
    """Ray Data on a local two-CPU instance, one classifier per worker: the same report as one process."""
    ray = pytest.importorskip("ray")  # in the dev extra: CI runs it
    from edgecxr.devices.distributed import parity_ray
    from edgecxr.devices.parity import Tolerances, run_parity
    from edgecxr.devices.classifier import Classifier

    bundle = tiny_bundles["tflite-int8"]
    tol = Tolerances(**TINY_INT8_LIMITS)
    single = run_parity(Classifier.load(bundle, threads=1), kermany, tolerances=tol)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        distributed = parity_ray(bundle, kermany, tolerances=tol, workers=2, batch_size=64)
    finally:
        ray.shutdown()
    assert distributed["n"] == 624
    assert json.loads(json.dumps(comparable(distributed))) == json.loads(json.dumps(comparable(single)))


def assert_same_numbers(a, b, tol, where="metrics"):
    """a == b, except that floats need only agree within tol."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_numbers(a[key], b[key], tol, f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_numbers(x, y, tol, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= tol, f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_evaluate_shards_merged_equal_the_single_run(tiny_model, kermany, tmp_path):
    """`evaluate --shard I/N --predictions` on the 624 test images, merged: the unsharded metrics.json."""
    r = cli("evaluate", "--model", tiny_model, "--data", kermany, "--out", tmp_path / "single", "--no-shortcuts",
            "--bootstrap", 200)
    assert r.exit_code == 0, r.output
    files = []
    for i in (1, 2, 3):
        files.append(tmp_path / f"eval-{i}.json")
        r = cli("evaluate", "--model", tiny_model, "--data", kermany, "--shard", f"{i}/3", "--predictions", files[-1],
                "--bootstrap", 200)
        assert r.exit_code == 0, r.output
    m = cli("device", "merge", *files, "--out", tmp_path / "merged")
    assert m.exit_code == 0, m.output
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    merged = json.loads((tmp_path / "merged" / "metrics.json").read_text())
    # TensorFlow's float kernels depend on the batch a shard puts an image in, at about 1e-9 on some CPUs
    # (AVX2 without VNNI): numbers agree to 1e-6, counts and everything else exactly
    assert single["n"] == 624
    assert_same_numbers(merged, single, tol=1e-6)
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())
    one_error_line(cli("device", "merge", files[0], files[2], "--out", tmp_path / "m2"), "2/3 missing")
    assert cli("evaluate", "--model", tiny_model, "--data", kermany, "--shard", "1/3").exit_code == 2
