"""Issue 17, section 4: the pipelined folder run (upscale_cli/pipeline.py) and its use by the CLI."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest
from test_cli import make_png, run

from upscale_cli.pipeline import Outcome, Pipeline


class Log:
    """Stage events in the order they happened (from either thread)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def add(self, what: str, job: int) -> None:
        with self._lock:
            self.events.append((what, job))

    def at(self, what: str, job: int) -> int:
        return self.events.index((what, job))


def _stages(log: Log, fail: dict[int, str] | None = None):
    fail = fail or {}

    def decode(job: int) -> int:
        log.add("decode-start", job)
        if fail.get(job) == "decode":
            raise ValueError(f"decode {job}")
        log.add("decode-end", job)
        return job * 10

    def compute(job: int, decoded: int) -> int:
        log.add("compute-start", job)
        if fail.get(job) == "compute":
            raise ValueError(f"compute {job}")
        log.add("compute-end", job)
        return decoded + 1

    def encode(job: int, computed: int) -> int:
        log.add("encode-start", job)
        if fail.get(job) == "encode":
            raise ValueError(f"encode {job}")
        log.add("encode-end", job)
        return computed

    return decode, compute, encode


def _run(jobs, overlap: bool, fail=None, stop_on_failure: bool = False) -> tuple[list[Outcome], Log]:
    log = Log()
    settled: list[Outcome] = []

    def settle(outcome: Outcome) -> bool:
        log.add("settle", outcome.job)
        settled.append(outcome)
        return not (stop_on_failure and outcome.error is not None)

    Pipeline(*_stages(log, fail), settle).run(jobs, overlap=overlap)
    return settled, log


@pytest.mark.parametrize("overlap", [True, False])
def test_outcomes_come_in_order_with_each_result(overlap: bool) -> None:
    settled, _ = _run(range(7), overlap)
    assert [o.job for o in settled] == list(range(7))
    assert [o.result for o in settled] == [j * 10 + 1 for j in range(7)]
    assert all(o.error is None and o.stage is None for o in settled)


def test_sequential_starts_no_thread_and_runs_stages_one_job_at_a_time() -> None:
    before = threading.active_count()
    seen: list[int] = []

    def decode(job: int) -> int:
        seen.append(threading.active_count())
        return job

    Pipeline(decode, lambda j, d: d, lambda j, c: c, lambda o: True).run(range(3), overlap=False)
    assert seen == [before] * 3


def test_lookahead_is_one_job_each_way() -> None:
    """A decode of N+2 never starts before N's compute ends; an encode starts only after the
    previous one ended; N+1 is decoded (and N-1 encoded) no later than N's compute ends."""
    n = 8
    _, log = _run(range(n), overlap=True)
    for i in range(n - 2):
        assert log.at("decode-start", i + 2) > log.at("compute-end", i)
    for i in range(1, n):
        assert log.at("encode-start", i) > log.at("encode-end", i - 1)
        assert log.at("settle", i) > log.at("settle", i - 1)
    computes = [e for e in log.events if e[0] == "compute-start"]
    assert [j for _, j in computes] == list(range(n))


def test_stages_overlap_the_compute() -> None:
    """While job 1 computes, job 0 is encoded and job 2 decoded (on the I/O thread)."""
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def compute(job: int, d: int) -> int:
        if job == 1:
            started.set()
            assert release.wait(10), "the I/O thread did not decode 2 and encode 0 during compute 1"
        return d

    def decode(job: int) -> int:
        if job == 2:
            assert started.wait(10)
            done.append("decode 2")
            if "encode 0" in done:
                release.set()
        return job

    def encode(job: int, c: int) -> int:
        if job == 0:
            assert started.wait(10)
            done.append("encode 0")
        return c

    settled: list[Outcome] = []
    Pipeline(decode, compute, encode, lambda o: settled.append(o) or True).run(range(3), overlap=True)
    assert [o.error for o in settled] == [None, None, None]
    assert done == ["encode 0", "decode 2"]


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("stage", ["decode", "compute", "encode"])
def test_a_stage_error_belongs_to_its_job_only(overlap: bool, stage: str) -> None:
    settled, log = _run(range(5), overlap, fail={2: stage})
    assert [o.job for o in settled] == list(range(5))
    bad = settled[2]
    assert bad.stage == stage and str(bad.error) == f"{stage} 2" and bad.result is None
    assert [o.result for o in settled if o.job != 2] == [1, 11, 31, 41]
    assert ("encode-start", 2) not in log.events or stage == "encode"


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("stage", ["decode", "compute", "encode"])
def test_stopping_at_a_failure_writes_nothing_after_it(overlap: bool, stage: str) -> None:
    """Job 2 fails; 3 may already be decoded (or computed), but it is never encoded nor settled."""
    settled, log = _run(range(6), overlap, fail={2: stage}, stop_on_failure=True)
    assert [o.job for o in settled] == [0, 1, 2]
    assert not [e for e in log.events if e[0] == "encode-start" and e[1] > 2]
    assert not [e for e in log.events if e[0] == "decode-start" and e[1] > 4]  # one ahead at most


def test_jobs_with_nothing_to_do_skip_compute_and_encode() -> None:
    log = Log()
    decode, compute, encode = _stages(log)
    settled: list[Outcome] = []
    Pipeline(lambda j: None if j % 2 else decode(j), compute, encode,
             lambda o: settled.append(o) or True).run(range(5), overlap=True)
    assert [o.result for o in settled] == [1, None, 21, None, 41]
    assert {j for what, j in log.events if what == "compute-start"} == {0, 2, 4}


def test_an_interrupt_finishes_the_encode_under_way_and_drops_the_rest() -> None:
    """Ctrl-C in job 1's compute: job 0's encode (I/O thread) ends whole; job 2 is not decoded
    past the one already queued, nothing is settled after the interrupt."""
    log = Log()
    decode, _, encode = _stages(log)
    encoding = threading.Event()

    def slow_encode(job: int, c: int) -> int:
        encoding.set()
        return encode(job, c)

    def compute(job: int, d: int) -> int:
        if job == 1:
            assert encoding.wait(10)
            raise KeyboardInterrupt
        return d

    settled: list[Outcome] = []
    with pytest.raises(KeyboardInterrupt):
        Pipeline(decode, compute, slow_encode, lambda o: settled.append(o) or True).run(range(5), overlap=True)
    assert ("encode-end", 0) in log.events
    assert not [e for e in log.events if e[0] == "decode-start" and e[1] > 2]
    assert threading.active_count() == 1 or all(t.name != "pipeline-io" for t in threading.enumerate())


def _run_warning_encodes(decode, compute, overlap: bool) -> list[Outcome]:
    """Four jobs whose encode warns ``wrote J``, all warnings shown; the settled outcomes."""

    def encode(job: int, c: int) -> int:
        warnings.warn(f"wrote {job}", UserWarning)
        return c

    settled: list[Outcome] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        Pipeline(decode, compute, encode, lambda o: settled.append(o) or True).run(range(4), overlap=overlap)
    return settled


@pytest.mark.parametrize("overlap", [True, False])
def test_warnings_of_a_stage_go_to_its_job(overlap: bool) -> None:
    def decode(job: int) -> int:
        warnings.warn(f"read {job}", UserWarning)
        return job

    settled = _run_warning_encodes(decode, lambda j, d: d, overlap)
    assert [[str(w.message) for w in o.warnings] for o in settled] == [[f"read {j}", f"wrote {j}"] for j in range(4)]


def test_filters_left_changed_by_interleaved_catch_warnings_are_restored() -> None:
    """Decode 1 (I/O thread) enters catch_warnings+ignore, compute 0 enters its own, decode 1
    exits first, compute 0 last: Python leaves "ignore" in place; the next jobs' warnings must
    still be seen."""
    in_decode, decode_exited = threading.Event(), threading.Event()

    def decode(job: int) -> int:
        if job == 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                in_decode.set()
                assert compute_entered.wait(10)
            decode_exited.set()
        return job

    compute_entered = threading.Event()

    def compute(job: int, d: int) -> int:
        if job == 0:
            assert in_decode.wait(10)
            with warnings.catch_warnings():
                compute_entered.set()
                assert decode_exited.wait(10)
        return d

    settled = _run_warning_encodes(decode, compute, overlap=True)
    assert [len(o.warnings) for o in settled] == [1, 1, 1, 1]


# --- the CLI: overlapped folder runs write what sequential ones write --------------------------


def _folder(tmp_path: Path, n: int = 5) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n):
        make_png(src / f"p{i}.png", (20 + 3 * i, 14 + i), mode="RGBA" if i == 2 else "RGB", seed=i)
    return src


@pytest.mark.parametrize("model", ["bicubic", "default"])
def test_overlapped_folder_run_writes_the_bytes_of_a_sequential_one(tmp_path: Path, capfd, model: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = _folder(tmp_path)
    outputs = {}
    for overlap in ("0", "1"):
        monkeypatch.setenv("UPSCALE_OVERLAP", overlap)
        out = tmp_path / f"out{overlap}"
        code, stdout, err = run([src, "-o", out, "--model", model, "--format", "jpg", "--json"], capfd)
        assert code == 0, err
        names = [Path(line.split('"output": "')[1].split('"')[0]).name for line in stdout.splitlines()]
        assert [name.split("_")[0] for name in names] == [f"p{i}" for i in range(5)]  # JSON lines in order
        assert [line for line in err.splitlines() if line.startswith("warning:")] == [
            f"warning: {src / 'p2.png'}: {out / names[2]}: JPEG has no alpha channel, transparency flattened onto white"]
        outputs[overlap] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert outputs["0"] == outputs["1"] and len(outputs["1"]) == 5


def test_overlapped_run_stops_at_the_first_failure_and_writes_nothing_after(tmp_path: Path, capfd) -> None:
    src = _folder(tmp_path)
    (src / "p2.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code, _, err = run([src, "-o", out, "--model", "bicubic", "--scale", "2"], capfd)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["p0_x2.png", "p1_x2.png"]
    assert "2 done, 0 skipped, 1 failed, 2 not run" in err
    code, _, err = run([src, "-o", out, "--model", "bicubic", "--scale", "2", "--skip-existing",
                        "--continue-on-error", "--json"], capfd)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["p0_x2.png", "p1_x2.png", "p3_x2.png", "p4_x2.png"]
    assert "2 done, 2 skipped, 1 failed" in err
    assert not list(out.glob(".*.tmp"))
