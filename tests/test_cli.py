"""Tests of the ``tinyzip`` command, run as a user would: ``python -m tinyzip.cli`` in a subprocess.

Bad input must give exactly one line on stderr and exit status 2, never a traceback.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tinyzip import io

# One BLAS thread: with other processes busy, OpenBLAS's spinning threads make these tiny models
# many times slower (see tinyzip/bench.py); the results do not depend on it.
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")


def _tinyzip(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "tinyzip.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


@pytest.mark.parametrize("args, words", [
    ((), ["demo", "train", "bench"]),
    (("train",), ["--task", "--preset", "--steps", "--out", "--seed", "--resume"]),
    (("bench", "train"), ["--json", "--presets"]),
])
def test_help(args, words):
    run = _tinyzip(*args, "--help")
    assert run.returncode == 0 and run.stderr == ""
    assert all(w in run.stdout for w in words), run.stdout


def _assert_one_line_error(run, words):
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert len(lines) == 1 and lines[0].startswith("tinyzip"), run.stderr
    assert "Traceback" not in run.stderr and words in lines[0], lines[0]


@pytest.mark.parametrize("args, words", [
    ((), "required: COMMAND"),
    (("fly",), "invalid choice: 'fly'"),
    (("train", "--task", "wmt99"), "invalid choice: 'wmt99'"),
    (("train", "--steps", "ten"), "invalid int value: 'ten'"),
    (("train", "--steps", "0"), "--steps"),
    (("bench",), "required: BENCH"),
    (("bench", "train", "--presets", "huge"), "unknown preset 'huge'"),
    (("bench", "kernels", "--passes", "0"), "--passes must be positive"),
])
def test_bad_arguments_give_one_line_and_status_2(args, words):
    _assert_one_line_error(_tinyzip(*args), words)


def test_integer_ffn_on_a_file_without_activation_ranges_is_one_line():
    from tinyzip.translation import SHIPPED_MODEL
    _assert_one_line_error(_tinyzip("eval", str(SHIPPED_MODEL), "--integer-ffn", "--n", "2"), "weights+activations")
    _assert_one_line_error(_tinyzip("eval", str(SHIPPED_MODEL), "--rounding", "single", "--n", "2"), "integer FFNs only")


def test_missing_checkpoint_file_on_resume(tmp_path):
    run = _tinyzip("train", "--task", "copy", "--resume", "--out", str(tmp_path / "model.npz"))
    _assert_one_line_error(run, f"{tmp_path / 'model.ckpt.npz'}: no such file")


def test_unwritable_output_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _assert_one_line_error(_tinyzip("train", "--task", "copy", "--steps", "1", "--out", str(blocker / "m.npz")), str(blocker))


def test_train_writes_a_loadable_model_and_resumes(tmp_path):
    out = tmp_path / "m.npz"
    run = _tinyzip("train", "--task", "copy", "--preset", "tiny", "--steps", "3", "--batch-size", "4", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}" in run.stdout and "step 3/3" in run.stderr
    params, config, extra = io.load_model(out)
    assert config["D"] == 32 and extra["task"] == "copy" and extra["steps"] == 3
    assert io.load_checkpoint(tmp_path / "m.ckpt.npz").step == 3
    run = _tinyzip("train", "--task", "copy", "--preset", "tiny", "--steps", "5", "--batch-size", "4", "--out", str(out),
                   "--resume")
    assert run.returncode == 0, run.stderr
    assert "step 4/5" in run.stderr and "step 1/5" not in run.stderr
    assert io.load_model(out)[2]["steps"] == 5


def _interactive_sigint():
    """Run in the child before exec: a terminal's Ctrl-C. A job started in the background of a
    non-interactive shell inherits SIGINT as *ignored* (POSIX), and Python then installs no
    KeyboardInterrupt handler; restore the default so the test means the same everywhere."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_writes_checkpoint_and_exits_with_one_line(tmp_path, signum):
    """SIGTERM (``kill PID``) stops a run as Ctrl-C does, so a background run can be stopped and resumed."""
    out = tmp_path / "m.npz"
    proc = subprocess.Popen([sys.executable, "-m", "tinyzip.cli", "train", "--task", "copy", "--preset", "tiny",
                             "--steps", "100000", "--out", str(out)], stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=_interactive_sigint)
    try:
        first = proc.stderr.readline()  # the progress line of step 1: training is under way
        assert first.startswith("step"), first
        proc.send_signal(signum)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    assert "Traceback" not in rest and rest.strip().splitlines()[-1].startswith("tinyzip: interrupted")
    assert io.load_checkpoint(tmp_path / "m.ckpt.npz").step >= 1 and not out.exists()


def test_bench_train_json_shape(tmp_path):
    path = tmp_path / "bench.json"
    run = _tinyzip("bench", "train", "--presets", "tiny", "--batch", "2", "--length", "4", "--repeats", "1",
                   "--json", str(path))
    assert run.returncode == 0, run.stderr
    assert "tokens/s" in run.stdout
    result = json.loads(path.read_text())
    (row,) = result["results"]
    assert {"preset", "D", "layers", "batch", "tokens", "step_seconds", "tokens_per_s"} <= set(row)
    assert row["preset"] == "tiny" and row["tokens"] == 2 * 4 and row["batch"] == 2
    assert np.isclose(row["tokens_per_s"], row["tokens"] / row["step_seconds"])


@pytest.mark.slow
def test_demo_measures_every_row_from_its_own_file(tmp_path):
    """The main job end to end on the seconds-long copy task: one row per method, each row's bytes
    are those of the file it names, compressed rows are smaller than the float32 file."""
    path, out = tmp_path / "demo.json", tmp_path / "demo"
    run = _tinyzip("demo", "--task", "copy", "--steps", "30", "--finetune-steps", "2", "--n-test", "16",
                   "--out", str(out), "--json", str(path))
    assert run.returncode == 0, run.stderr
    rows = json.loads(path.read_text())["rows"]
    assert [r["method"] for r in rows][:2] == ["float32", "magnitude_pruning-80"]
    assert {"kmeans-4bit", "binarization", "uniform-ptq-8bit", "binary_codes-2bit-greedy"} <= {r["method"] for r in rows}
    base = rows[0]
    assert base["ratio"] == 1.0 and base["file_bytes"] == os.path.getsize(out / "float32.npz")
    for r in rows[1:]:
        assert r["file_bytes"] == os.path.getsize(r["path"]) and r["file_bytes"] < base["file_bytes"]
        assert r["ratio"] == base["file_bytes"] / r["file_bytes"]
        assert 0.0 <= r["bleu"] <= 100.0 and r["decode_tokens_per_s"] > 0
        assert r["attention_entropy"] is None or r["attention_entropy"] >= 0   # None: no cross-attention head left
    assert all(r["method"] in run.stdout for r in rows)




@pytest.mark.slow
def test_demo_resume_keeps_measured_rows_and_finishes(tmp_path):
    """An interrupted demo (here: a JSON cut after two rows) resumed with --resume keeps the rows it
    had, measured by the first run, and measures only the rest."""
    path, out = tmp_path / "demo.json", tmp_path / "demo"
    args = ("demo", "--task", "copy", "--steps", "30", "--finetune-steps", "2", "--n-test", "8",
            "--out", str(out), "--json", str(path))
    assert _tinyzip(*args).returncode == 0
    first = json.loads(path.read_text())
    cut = dict(first, rows=first["rows"][:2])
    path.write_text(json.dumps(cut))
    run = _tinyzip(*args, "--resume")
    assert run.returncode == 0, run.stderr
    second = json.loads(path.read_text())["rows"]
    assert second[:2] == first["rows"][:2]                  # kept as measured, not re-measured
    assert [r["key"] for r in second] == [r["key"] for r in first["rows"]]
    assert "training the float32 baseline" not in run.stderr and "(resumed run)" in run.stderr
    segments = json.loads(path.read_text())["segments"]     # wall time: the cut run's segment + this one
    assert [s["rows_measured"] for s in segments] == [len(first["rows"]), len(first["rows"]) - 2]
    assert json.loads(path.read_text())["wall_seconds"] == pytest.approx(sum(s["seconds"] for s in segments))


def test_demo_resume_needs_json():
    _assert_one_line_error(_tinyzip("demo", "--resume"), "--resume needs --json")


def test_bench_kernels_json_has_every_kernel_and_the_lut_layer_path(tmp_path):
    """Correctness is checked before timing (bench raises otherwise); the LUT rows also time the
    dispatching layer path that a model runs."""
    path = tmp_path / "kernels.json"
    run = _tinyzip("bench", "kernels", "--shapes", "64x48", "--batches", "1,8", "--repeats", "1", "--passes", "3",
                   "--json", str(path))
    assert run.returncode == 0, run.stderr
    rows = json.loads(path.read_text())["results"]
    assert {r["kernel"] for r in rows} == {"int8", "lut-q1", "lut-q2", "lut-q3", "codebook-4bit", "sparse-90",
                                           "numpy-copy"}
    for r in rows:
        assert np.isclose(r["ratio_vs_numpy"], r["numpy_fp32_seconds"] / r["seconds"])
        assert ("auto_ratio_vs_numpy" in r) == r["kernel"].startswith("lut")
        assert len(r["ratio_vs_numpy_passes"]) == 3   # one ratio per pass; the row's seconds are the median pass
        assert r["caches"] == "warm"
    assert all(r["max_rel_error"] == 0.0 for r in rows if r["kernel"] == "numpy-copy")   # the same product


def test_bench_kernels_cold_marks_every_row(tmp_path):
    path = tmp_path / "kernels.json"
    run = _tinyzip("bench", "kernels", "--kernels", "lut-q1,numpy-copy", "--shapes", "64x48", "--batches", "1",
                   "--repeats", "1", "--cold", "--json", str(path))
    assert run.returncode == 0, run.stderr
    assert "--cold" in run.stdout
    result = json.loads(path.read_text())
    assert [r["caches"] for r in result["results"]] == ["cold", "cold"]
    from tinyzip.kernels import int8
    assert result["machine"]["cpu"]                                  # LLVM's name of the CPU model
    assert result["machine"]["int8_kernel"] == ("avx512-vnni" if int8.HAS_VNNI else "avx2" if int8.HAS_AVX2
                                                else "portable")
    from tinyzip.kernels.lut_gemv_avx512 import HAS_AVX512
    assert result["machine"]["lut_gemv_kernel"] == ("avx512-vpermps" if HAS_AVX512 else "scalar")


def test_bench_kernels_default_list_is_the_benchmarks():
    """The CLI keeps its own copy (so that --help does not import Numba); it must not drift."""
    from tinyzip import bench, cli
    assert cli._KERNELS == bench.KERNELS
