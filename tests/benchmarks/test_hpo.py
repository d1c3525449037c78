"""benchmarks/hpo.py on a small case in futures and serve mode: trials ran, the ones ASHA
stopped were killed and are KILLED in the store, promotions were tasks created while the search
ran, and the JSON line parses; bad sizes are refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import hpo
import hpo_modes

from balsam_dask.store import Store

# seed 30: configurations 0 and 1 are the best two of four after one epoch, so whichever of the two
# reports first is paused alone in its rung and promoted later by a new task
SMALL = ["--trials", "4", "--min-epochs", "1", "--max-epochs", "4", "--eta", "2", "--nodes", "1",
         "--cores-per-node", "2", "--target", "0.9", "--seed", "30"]  # fmt: skip


@pytest.mark.slow
def test_a_small_search_kills_promotes_and_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = hpo.main([*SMALL, "--modes", "futures,serve", "--workdir", str(tmp_path)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    for mode in ("futures", "serve"):
        f = {k.removeprefix(f"{mode}_"): v for k, v in figures.items() if k.startswith(f"{mode}_")}
        assert f["configs"] == 4 and f["failed"] == 0, f
        # every trial ended FINISHED or KILLED; each one ASHA stopped was killed (it cannot finish unpromoted)
        assert f["finished"] + f["killed"] == f["trials"] > f["configs"], f
        assert f["killed"] == f["kills_asked"] >= 2, f
        assert f["promotions"] == f["promotions_after_a_result"] >= 1, f
        assert 0 < f["utilization"] <= 1 and 0 < f["best_accuracy"] <= 1 and f["kill_lag_s"] >= 0, f
        assert 0 < f["report_utilization"] <= 1, f  # the run's report (balsam_dask.report), its plots written
        assert sorted(p.suffix for p in (tmp_path / f"{mode}_0" / "report").iterdir()) == [".png"] * 5
        with Store(f"sqlite:///{tmp_path}/{mode}_0/store.db", read_only=True) as store:
            trials = [t for t in store.tasks(limit=None) if t.tags.get("role") == "trial"]
            assert len(trials) == f["trials"]
            killed = [t for t in trials if t.state == "KILLED"]
            assert len(killed) == f["killed"]
            assert all(store.history(t.id)[-1].to_state == "KILLED" for t in killed)
            # a promotion resumes a configuration some earlier trial paused, created after that trial's end
            for t in trials:
                if t.tags["start"] != "0":
                    earlier = [u for u in trials if u.tags["config"] == t.tags["config"] and u.id != t.id]
                    assert earlier and min(store.history(u.id)[-1].ts for u in earlier) <= t.created_at
            assert {t.cores for t in trials} <= {1, 2}
            if mode == "serve":
                assert {t.function for t in trials} == {hpo_modes.FUNCTION}


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--trials", "0"], "argument --trials: '0' is not a whole number >= 1"),
     (["--eta", "1"], "argument --eta: '1' is not a whole number >= 2"),
     (["--target", "1.5"], "argument --target: '1.5' is not an accuracy in (0, 1] (for example 0.95)"),
     (["--modes", "futures,ray"], "argument --modes: 'futures,ray' is not a list of futures, serve, dask"),
     (["--min-epochs", "9", "--max-epochs", "3"], "--min-epochs 9 is more than --max-epochs 3"),
     (["--site", "/nowhere"], "--site runs ours only: give --modes futures,serve with --site"),
     (["--site", "/nowhere", "--modes", "serve"], "--site: /nowhere: the site directory does not exist: create it")],
)  # fmt: skip
def test_bad_sizes_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        hpo.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
