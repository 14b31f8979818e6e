"""Fault injection: every bad input, bad value or damaged file gives an error (or a warning where the run goes on
correctly) that names it and says what to do, and nothing is lost: the history rows, the checkpoint's step and the
parameters are checked after each fault."""
import json
import math
import os
import warnings

import pytest
import torch

from fdpg_core import sampling
from fdpg_core.divergences import alpha_divergence, get_divergence
from fdpg_core.losses import NonFiniteLossError as LossesNonFinite
from fdpg_core.sampling import left_pad, sample
from fdpg_core.targets import BinaryFactor, ExponentialFactor, ScalarFactor, Scored, Target
from fdpg_core.kit.toy import make_toy_problem, tiny_gpt2
from fdpg_core.train import FDPGConfig, NonFiniteLossError, ZeroTargetMassError, train


pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: avoid oversubscription


def _cfg(**kw):
    base = dict(batch_size=8, n_steps=3, max_new_tokens=3, lr=2e-3, warmup_steps=0, progress=False)
    base.update(kw)
    return FDPGConfig(**base)


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _steps(out):
    with open(out / "history.jsonl") as fh:
        return [json.loads(line)["step"] for line in fh]


def _ck(out):
    return torch.load(out / "checkpoint.pt", weights_only=False)


def _snapshot(out):
    """Every file of a run folder, by name, as bytes (to prove a fault changed nothing)."""
    return {n: (out / n).read_bytes() for n in sorted(os.listdir(out))}


def _holds_checkpoint(policy, out):
    """The policy holds exactly the checkpoint's parameters (no update after it)."""
    now = policy.state_dict()
    return all(torch.equal(now[k], v) for k, v in _ck(out)["policy"].items())


def _strip(hist):
    return [{k: v for k, v in r.items() if k != "time/step_s"} for r in hist]


def _scalar(fn, beta=0.5):
    """Toy problem whose target is a · exp(fn(samples) / beta)."""
    pb = make_toy_problem("scalar")
    return pb, Target(pb.target.base) * ScalarFactor("r", fn, beta)


def _word0(s):
    return ((s.tokens == 0) & s.mask).sum(-1).float()


def _at_call(k, fault):
    """A scorer equal to r = #word-0 tokens except at its k-th call (1-based), where fault(r) is returned."""
    calls = []

    def fn(s):
        calls.append(1)
        r = _word0(s)
        return fault(r) if len(calls) == k else r
    return fn


def _set_row0(value):
    def fault(r):
        r = r.clone()
        r[0] = value
        return r
    return fault


def _killed_run(out, kill_at, n_steps=6, **kw):
    """A run stopped (as by a kill) right after the record of step `kill_at` reached the disk."""
    def kill(rec, policy):
        if rec["step"] == kill_at:
            raise KeyboardInterrupt
    pb = make_toy_problem("scalar")
    with pytest.raises(KeyboardInterrupt):
        train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=n_steps, out_dir=str(out), seed=5, **kw), callbacks=[kill])
    return pb


# ----------------------------------------------------------------------------- 1. non-finite values stop the run
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_log_q_from_a_sampler_stops_before_Z_is_updated(tmp_path, value):
    calls = []

    def sampler(*a, **kw):
        s = sample(*a, **kw)
        calls.append(1)
        if len(calls) == 3:
            s.log_q[2] = value
        return s
    pb = make_toy_problem("scalar")
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 2: log q of the samples is not finite on 1 of 8 samples.*"
                                                 r"custom sampler must return each sample's log q"):
        train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=5, checkpoint_every=1, out_dir=str(out)), sampler=sampler)
    assert _steps(out) == [0, 1]
    ck = _ck(out)
    assert ck["state"]["step"] == 2 and torch.isfinite(ck["state"]["log_S"]).all()  # Ẑ never saw the bad value
    assert _holds_checkpoint(pb.policy, out)


def test_nan_scorer_value_names_the_factor_and_keeps_the_last_checkpoint(tmp_path):
    pb, target = _scalar(_at_call(2, _set_row0(math.nan)))
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 1: Target.score: .*factor 'r' \(ScalarFactor\) gave NaN on 1 "
                                                 r"of 8 samples \(rows \[0\].*No update was applied") as e:
        train(pb.policy, target, pb.prompts, _cfg(n_steps=4, checkpoint_every=1, out_dir=str(out)))
    assert "the last checkpoint" in str(e.value) and "checkpoint.pt" in str(e.value)
    assert _steps(out) == [0] and _ck(out)["state"]["step"] == 1 and _holds_checkpoint(pb.policy, out)


def test_plus_inf_scorer_value_names_the_factor():
    pb, target = _scalar(_at_call(1, _set_row0(math.inf)))
    p0 = _params(pb.policy)
    with pytest.raises(NonFiniteLossError, match=r"step 0: .*factor 'r' \(ScalarFactor\) gave \+inf"):
        train(pb.policy, target, pb.prompts, _cfg())
    assert torch.equal(_params(pb.policy), p0)


def test_exponential_factor_nan_feature_names_the_factor():
    pb = make_toy_problem("scalar")
    target = Target(pb.target.base) * ExponentialFactor("phi", _at_call(1, _set_row0(math.nan)), lam=[0.3])
    p0 = _params(pb.policy)
    with pytest.raises(NonFiniteLossError, match=r"factor 'phi' \(ExponentialFactor\) gave NaN"):
        train(pb.policy, target, pb.prompts, _cfg())
    assert torch.equal(_params(pb.policy), p0)


def test_target_score_alone_raises_the_documented_error_naming_the_factor():
    pb = make_toy_problem("scalar")
    assert NonFiniteLossError is LossesNonFinite  # one class, importable from train and from losses
    target = Target(pb.target.base) * BinaryFactor("ok", lambda s: torch.ones(len(s))) * \
        ScalarFactor("bad", lambda s: torch.full((len(s),), math.nan), 1.0)
    with pytest.raises(NonFiniteLossError, match=r"factor 'bad' \(ScalarFactor\) gave NaN on 40 of 40") as e:
        target.score(pb.support)
    assert "'ok'" not in str(e.value)  # only the culprit is named
    # −inf is zero mass, not an error
    zero = Target(pb.target.base) * BinaryFactor("never", lambda s: torch.zeros(len(s)))
    assert (zero.score(pb.support).log_P == -math.inf).all()


def test_tiny_beta_names_the_factor_and_beta_and_a_subnormal_beta_is_rejected():
    pb, target = _scalar(_word0, beta=1e-300)  # r / β = 1e300 overflows log P's float32
    with pytest.raises(NonFiniteLossError, match=r"step 0: .*factor 'r' \(ScalarFactor\) gave values beyond the "
                                                 r"torch.float32 range.*beta=1e-300.*larger beta"):
        train(pb.policy, target, pb.prompts, _cfg())
    with pytest.raises(ValueError, match=r"ScalarFactor 'r': beta=1e-320.*1/beta is finite"):
        ScalarFactor("r", _word0, 1e-320)


class _Shifted:
    """A target-like object (not a Target): the toy target with log a or log P replaced at one call."""

    def __init__(self, target, field, value, at_call=1):
        self.target, self.field, self.value, self.at_call, self.calls = target, field, value, at_call, 0

    def score(self, samples):
        self.calls += 1
        sc = self.target.score(samples)
        if self.calls != self.at_call:
            return sc
        vals = {"log_a": sc.log_a.clone(), "log_P": sc.log_P.clone()}
        vals[self.field][0] = self.value
        return Scored(log_a=vals["log_a"], log_P=vals["log_P"], features=sc.features)


def test_nan_log_a_stops_instead_of_writing_a_null_kl_pi_a(tmp_path):
    pb = make_toy_problem("scalar")
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 1: the target returned log a = NaN or \+inf on 1 of 8"):
        train(pb.policy, _Shifted(pb.target, "log_a", math.nan, at_call=2), pb.prompts,
              _cfg(checkpoint_every=1, out_dir=str(out)))
    with open(out / "history.jsonl") as fh:
        rows = [json.loads(line) for line in fh]
    assert [r["step"] for r in rows] == [0] and rows[0]["div/kl_pi_a"] is not None
    assert _holds_checkpoint(pb.policy, out)


def test_nan_log_P_from_a_custom_target_is_a_non_finite_error():
    pb = make_toy_problem("scalar")
    p0 = _params(pb.policy)
    with pytest.raises(NonFiniteLossError, match=r"step 0: the target returned log P = NaN or \+inf on 1 of 8 samples; "
                                                 r"allowed: finite or -inf"):
        train(pb.policy, _Shifted(pb.target, "log_P", math.nan), pb.prompts, _cfg())
    assert torch.equal(_params(pb.policy), p0)


def test_nan_log_pi_is_reported_as_a_diverged_policy_not_as_a_missing_floor():
    pb = make_toy_problem("scalar")
    q = tiny_gpt2(4, seed=0)  # a healthy proposal: log q stays finite
    with torch.no_grad():
        pb.policy.transformer.wte.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteLossError, match=r"step 0: log π_θ of the samples is not finite on \d+ of \d+ samples"
                                                 r".*diverged; lower lr or set max_grad_norm") as e:
        train(pb.policy, pb.target, pb.prompts, _cfg(proposal="offline"), proposal=q)
    assert "log_floor" not in str(e.value)


def test_overflowing_importance_weights_are_named():
    def sampler(*a, **kw):  # a proposal that claims its samples were very unlikely: π/q = e^300
        s = sample(*a, **kw)
        s.log_q[:] = -300.0
        return s
    pb = make_toy_problem("scalar")
    p0 = _params(pb.policy)
    with pytest.raises(NonFiniteLossError, match=r"step 0: non-finite loss .*largest log importance weight log π_θ/q "
                                                 r"is 2\d\d"):
        train(pb.policy, pb.target, pb.prompts, _cfg(proposal="offline"), sampler=sampler)
    assert torch.equal(_params(pb.policy), p0)


def test_a_huge_lr_stops_at_the_next_step_and_the_checkpoint_stays_finite(tmp_path):
    pb = make_toy_problem("scalar")
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 1: .*not finite.*lr=1e\+10.*lower lr"):
        train(pb.policy, pb.target, pb.prompts, _cfg(lr=1e10, n_steps=5, out_dir=str(out), checkpoint_every=1))
    ck = _ck(out)
    assert ck["state"]["step"] == 1 and torch.isfinite(ck["state"]["log_S"]).all()
    assert _steps(out) == [0]


def test_parameters_made_non_finite_by_an_update_never_reach_the_checkpoint(tmp_path):
    def diverge(rec, policy):  # stands in for an update that overflowed at step 2
        if rec["step"] == 2:
            with torch.no_grad():
                policy.lm_head.weight[1, 1] = math.inf
    pb = make_toy_problem("scalar")
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"after the update of step 2: 1 parameter tensor\(s\) became "
                                                 r"non-finite.*checkpoint.pt' was not overwritten"):
        train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=5, checkpoint_every=1, out_dir=str(out)),
              callbacks=[diverge])
    ck = _ck(out)
    assert ck["state"]["step"] == 2 and all(torch.isfinite(v).all() for v in ck["policy"].values()
                                            if v.is_floating_point())


@pytest.mark.parametrize("lr,shown", [(math.inf, "lr=inf"), (-1e-3, "lr=-0.001"), ("1e-3", "lr='1e-3'"),
                                      (1e38, "lr=1e\\+38.*float32 maximum")])
def test_lr_is_validated(lr, shown):
    with pytest.raises(ValueError, match=shown):
        FDPGConfig(lr=lr)


# ----------------------------------------------------------------------------- 2. out_dir: nothing is overwritten
def test_fresh_run_refuses_an_out_dir_that_holds_a_run(tmp_path):
    pb = make_toy_problem("scalar")
    out = tmp_path / "run"
    train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=4, out_dir=str(out)))
    before = _snapshot(out)
    pb2 = make_toy_problem("scalar")
    p0 = _params(pb2.policy)
    with pytest.raises(FileExistsError, match=r"already holds a run \(checkpoint.pt and history.jsonl with 4 "
                                              r"record\(s\)\).*resume=True.*FDPGConfig\(overwrite=True\)"):
        train(pb2.policy, pb2.target, pb2.prompts, _cfg(n_steps=2, out_dir=str(out)))
    assert _snapshot(out) == before and torch.equal(_params(pb2.policy), p0)


def test_overwrite_true_replaces_the_old_run_whole(tmp_path):
    pb = make_toy_problem("scalar")
    out = tmp_path / "run"
    train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=5, out_dir=str(out)))
    pb2 = make_toy_problem("scalar")
    train(pb2.policy, pb2.target, pb2.prompts, _cfg(n_steps=2, out_dir=str(out), overwrite=True))
    assert _steps(out) == [0, 1] and _ck(out)["state"]["step"] == 2 and _holds_checkpoint(pb2.policy, out)


def test_overwrite_run_killed_before_its_first_checkpoint_cannot_resume_into_the_old_checkpoint(tmp_path):
    """The old checkpoint goes with the first record of the new run: a later resume cannot mix the old run's
    checkpoint (step 6) with the new run's rows (steps 0-2), which showed rows 0-2 then 6-... with 3-5 missing."""
    out = tmp_path / "run"
    pb = make_toy_problem("scalar")
    train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=6, out_dir=str(out)))
    _killed_run(out, kill_at=2, n_steps=10, checkpoint_every=5, overwrite=True)
    assert _steps(out) == [0, 1, 2] and not (out / "checkpoint.pt").exists()
    pb3 = make_toy_problem("scalar")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(pb3.policy, pb3.target, pb3.prompts, _cfg(n_steps=10, out_dir=str(out), checkpoint_every=5), resume=True)
    assert _steps(out) == [0, 1, 2]


def test_a_run_that_fails_validation_writes_nothing(tmp_path):
    pb = make_toy_problem("scalar")
    out = tmp_path / "run"
    train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=3, out_dir=str(out)))
    before = _snapshot(out)
    bad_prompts = (torch.tensor([[7]]), torch.tensor([[1]]))  # token 7 is outside the vocabulary (4)
    with pytest.raises(ValueError, match=r"prompt token ids must be in \[0, 4\)"):
        train(pb.policy, pb.target, bad_prompts, _cfg(n_steps=3, out_dir=str(out), overwrite=True))
    assert _snapshot(out) == before  # overwrite=True, but the run never wrote its first record
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="prompt token ids"):
        train(pb.policy, pb.target, bad_prompts, _cfg(n_steps=3, out_dir=str(fresh)))
    assert not fresh.exists()


def test_a_resume_that_fails_before_its_first_record_leaves_the_files_as_they_were(tmp_path):
    out = tmp_path / "run"
    _killed_run(out, kill_at=3, checkpoint_every=2)
    before = _snapshot(out)
    assert _steps(out) == [0, 1, 2, 3] and _ck(out)["state"]["step"] == 2

    def broken(*a, **kw):
        raise RuntimeError("sampler broke")
    pb = make_toy_problem("scalar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="sampler broke"):
            train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=6, out_dir=str(out), seed=5, checkpoint_every=2),
                  resume=True, sampler=broken)
    assert _snapshot(out) == before


def test_each_record_is_on_disk_when_the_next_step_starts(tmp_path):
    out = tmp_path / "run"
    seen = []
    pb = make_toy_problem("scalar")
    train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=3, out_dir=str(out)),
          callbacks=[lambda rec, policy: seen.append(_steps(out))])
    assert seen == [[0], [0, 1], [0, 1, 2]]


def test_the_resume_rewrite_is_atomic(tmp_path, monkeypatch):
    """The rewrite of history.jsonl goes through a temporary file and os.replace: when it fails, the old file is
    whole (an in-place rewrite would have truncated it)."""
    out = tmp_path / "run"
    _killed_run(out, kill_at=3, checkpoint_every=2)
    before = _snapshot(out)

    def no_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", no_replace)
    pb = make_toy_problem("scalar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(OSError, match="No space left"):
            train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=6, out_dir=str(out), seed=5, checkpoint_every=2),
                  resume=True)
    monkeypatch.undo()
    after = _snapshot(out)
    after.pop("history.jsonl.tmp", None)
    assert after == before


def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    out = tmp_path / "run"
    pb = make_toy_problem("scalar")
    real_save = torch.save
    saves = []

    def save(obj, path, *a, **kw):
        saves.append(path)
        if len(saves) == 2:
            with open(path, "wb") as fh:
                fh.write(b"half")
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **kw)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match=r"could not write the checkpoint '.*checkpoint.pt'.*No space left.*previous "
                                      r"checkpoint, if any, is unchanged"):
        train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=4, out_dir=str(out), checkpoint_every=1))
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "history.jsonl"]  # no half-written temp file left
    assert _ck(out)["state"]["step"] == 1 and _steps(out) == [0, 1]


# ----------------------------------------------------------------------------- 3. low-precision policies
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_policy_is_refused_with_the_fix(tmp_path, dtype):
    pb = make_toy_problem("scalar")
    pb.policy.to(dtype)
    p0 = _params(pb.policy)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"trainable parameter tensor\(s\) of the policy are {dtype} \(e.g. "
                                         r"'transformer.wte.weight'\).*rounded away.*Call policy.float\(\)"):
        train(pb.policy, pb.target, pb.prompts, _cfg(out_dir=str(out)))
    assert torch.equal(_params(pb.policy), p0) and not out.exists()


def test_the_suggested_fix_trains_and_a_low_precision_base_model_is_fine():
    pb = make_toy_problem("scalar")
    pb.policy.to(torch.bfloat16).float()  # what a bf16 checkpoint loads as, then the fix
    pb.target.base.to(torch.bfloat16)  # a may stay in bf16: it is only scored
    p0 = _params(pb.policy)
    hist = train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=2))
    assert len(hist) == 2 and not torch.equal(_params(pb.policy), p0)


# ----------------------------------------------------------------------------- 4. damaged files on resume
def test_resume_drops_a_torn_last_line_and_rows_past_the_checkpoint_with_a_warning(tmp_path):
    ref = tmp_path / "ref"
    pr = make_toy_problem("scalar")
    want = train(pr.policy, pr.target, pr.prompts, _cfg(n_steps=6, out_dir=str(ref), seed=5, checkpoint_every=2))
    out = tmp_path / "run"
    _killed_run(out, kill_at=3, checkpoint_every=2)
    with open(out / "history.jsonl", "ab") as fh:
        fh.write(b'{"step": 4, "train/lo')  # the kill tore the next record
    pb = make_toy_problem("scalar")
    with pytest.warns(UserWarning, match=r"history.jsonl': dropped 2 record\(s\) at or past the checkpoint's step 2.*"
                                         r"1 unparsable line\(s\) at the end \(\[5\]"):
        got = train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=6, out_dir=str(out), seed=5, checkpoint_every=2),
                    resume=True)
    assert _strip(got) == _strip(want) and _steps(out) == list(range(6))
    assert torch.equal(_params(pb.policy), _params(pr.policy))


def test_a_damaged_row_before_the_checkpoint_names_the_file_and_line(tmp_path):
    out = tmp_path / "run"
    _killed_run(out, kill_at=3, checkpoint_every=2)
    lines = (out / "history.jsonl").read_bytes().split(b"\n")
    lines[0] = lines[0][:10]
    (out / "history.jsonl").write_bytes(b"\n".join(lines))
    before = _snapshot(out)
    pb = make_toy_problem("scalar")
    p0 = _params(pb.policy)
    with pytest.raises(ValueError, match=r"history.jsonl' line 1 is not a history record.*before the checkpoint's "
                                         r"step 2 follow it \(line 2\).*repair or delete line 1"):
        train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=6, out_dir=str(out), seed=5, checkpoint_every=2),
              resume=True)
    assert _snapshot(out) == before and torch.equal(_params(pb.policy), p0)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_names_its_path(tmp_path, damage):
    out = tmp_path / "run"
    pb = make_toy_problem("scalar")
    train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=2, out_dir=str(out)))
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes({"truncated": data[:len(data) // 2], "garbage": os.urandom(256),
                                         "empty": b""}[damage])
    before = _snapshot(out)
    pc = make_toy_problem("scalar")
    p0 = _params(pc.policy)
    with pytest.raises(ValueError, match=r"cannot read the checkpoint '.*run/checkpoint.pt' .*truncated or corrupt.*"
                                         r"restore an intact copy.*overwrite=True"):
        train(pc.policy, pc.target, pc.prompts, _cfg(n_steps=4, out_dir=str(out)), resume=True)
    assert _snapshot(out) == before and torch.equal(_params(pc.policy), p0)


def test_a_foreign_file_as_checkpoint_is_named(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"weights": torch.zeros(2)}, out / "checkpoint.pt")
    pb = make_toy_problem("scalar")
    with pytest.raises(ValueError, match=r"checkpoint.pt' is not an f-DPG checkpoint \(missing \['config', 'policy'"):
        train(pb.policy, pb.target, pb.prompts, _cfg(out_dir=str(out)), resume=True)


# ----------------------------------------------------------------------------- 5. a target with no mass
def _never(pb):
    return Target(pb.target.base) * BinaryFactor("never", lambda s: torch.zeros(len(s), dtype=torch.bool))


def test_consecutive_skipped_steps_stop_with_the_base_rate_and_the_fixes(tmp_path):
    pb = make_toy_problem("scalar")
    p0 = _params(pb.policy)
    out = tmp_path / "run"
    with pytest.raises(ZeroTargetMassError, match=r"step 2: 3 steps in a row were skipped.*0 of the last 24 samples, "
                                                  r"below 0.042.*log_floor.*proposal='offline'.*batch_size.*"
                                                  r"max_consecutive_skips=None"):
        train(pb.policy, _never(pb), pb.prompts, _cfg(n_steps=20, max_consecutive_skips=3, checkpoint_every=1,
                                                      out_dir=str(out)))
    assert _steps(out) == [0, 1, 2] and _ck(out)["state"]["step"] == 3 and torch.equal(_params(pb.policy), p0)


def test_the_default_stops_after_ten_skips_and_none_never_stops():
    pb = make_toy_problem("scalar")
    assert FDPGConfig().max_consecutive_skips == 10
    with pytest.raises(ZeroTargetMassError, match="step 9: 10 steps in a row"):
        train(pb.policy, _never(pb), pb.prompts, _cfg(n_steps=30, batch_size=2))
    hist = train(pb.policy, _never(pb), pb.prompts, _cfg(n_steps=12, batch_size=2, max_consecutive_skips=None))
    assert hist[-1]["train/skipped_steps"] == 12


def test_skips_that_are_not_consecutive_do_not_stop_the_run():
    """Two contexts, one per batch (alternating): context 1 has no mass, so every other step is skipped."""
    pb = make_toy_problem("conditional", n_contexts=2)
    target = Target(pb.target.base) * BinaryFactor("ctx0", lambda s: s.context_ids == 0)
    hist = train(pb.policy, target, pb.prompts, _cfg(n_steps=8, samples_per_context=8, max_consecutive_skips=2))
    assert hist[-1]["train/skipped_steps"] == 4 and [r.get("train/skipped", 0) for r in hist] == [0, 1] * 4


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_consecutive_skips_is_validated(bad):
    with pytest.raises(ValueError, match=r"max_consecutive_skips=.*None or int >= 1"):
        FDPGConfig(max_consecutive_skips=bad)


# ----------------------------------------------------------------------------- 6. unclear errors made clear
def test_an_empty_prompt_tensor_is_named():
    pb = make_toy_problem("scalar")
    with pytest.raises(ValueError, match=r"prompt_ids has shape \(0, 1\); allowed: \(C, Tp\) with C >= 1"):
        train(pb.policy, pb.target, (torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)),
              _cfg())


@pytest.mark.parametrize("source", ["config", "tokenizer"])
def test_an_out_of_vocabulary_eos_is_reported_as_eos(source):
    class Tok:
        eos_token_id, pad_token_id = 99, None

        def batch_decode(self, seqs, skip_special_tokens=True):
            return ["" for _ in seqs]
    pb = make_toy_problem("scalar")
    cfg, tok = (_cfg(eos_token_id=99), None) if source == "config" else (_cfg(), Tok())
    with pytest.raises(ValueError, match=rf"eos_token_id=99 \(from {source}.eos_token_id\) is outside the policy's "
                                         r"vocabulary; allowed: an int in \[0, 4\)"):
        train(pb.policy, pb.target, pb.prompts, cfg, tokenizer=tok)


def test_an_out_of_vocabulary_pad_is_reported_as_pad():
    pb = make_toy_problem("scalar")
    with pytest.raises(ValueError, match=r"pad_token_id=4 \(from config.pad_token_id\)"):
        train(pb.policy, pb.target, pb.prompts, _cfg(pad_token_id=4))


def test_sample_checks_eos_before_the_pad_that_defaults_to_it():
    pb = make_toy_problem("scalar")
    with pytest.raises(ValueError, match=r"^eos_token_id must be an int in \[0, 4\)"):
        sample(pb.policy, *pb.prompts, 3, eos_token_id=9, pad_token_id=9)


@pytest.mark.parametrize("pad", [None, "0", 1.5, -1])
def test_left_pad_names_a_bad_pad_id(pad):
    with pytest.raises(ValueError, match=r"left_pad: pad_id=.*allowed: an int token id >= 0.*eos_token_id"):
        left_pad([[1, 2], [3]], pad)
    assert left_pad([[1, 2], [3]], torch.tensor(0))[0].tolist() == [[1, 2], [0, 3]]  # an int tensor is an id


@pytest.mark.parametrize("returned,shown", [(None, "returned None"), ("good", "returned a str 'good'"),
                                            (["a", "b"], "returned a list"), ({"r": 1}, "returned a dict")])
def test_a_scorer_returning_no_numbers_is_named(returned, shown):
    pb = make_toy_problem("scalar")
    target = Target(pb.target.base) * BinaryFactor("b", lambda s: returned)
    with pytest.raises(ValueError, match=rf"scorer of factor 'b' {shown}.*expected a tensor \(or list\) of numbers or "
                                         r"bools of shape \(B,\) with B=8"):
        train(pb.policy, target, pb.prompts, _cfg())


def test_device_gpu_is_rejected_listing_the_allowed_values():
    with pytest.raises(ValueError, match=r"device='gpu' \(allowed: None \(the policy's device\) or a torch device of "
                                         r"type \['cpu', 'cuda', 'mps', 'xpu'\]"):
        FDPGConfig(device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    pb = make_toy_problem("scalar")
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available here.*allowed: 'cpu'"):
        train(pb.policy, pb.target, pb.prompts, _cfg(device="cuda", out_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_config_changed_after_construction_is_validated_by_train(tmp_path):
    cfg = _cfg(out_dir=str(tmp_path / "run"))
    cfg.batch_size = 0
    pb = make_toy_problem("scalar")
    with pytest.raises(ValueError, match=r"batch_size=0 \(allowed: int >= 1\)"):
        train(pb.policy, pb.target, pb.prompts, cfg)
    cfg.batch_size, cfg.divergence = 8, "kld"
    with pytest.raises(ValueError, match="unknown divergence 'kld'"):
        train(pb.policy, pb.target, pb.prompts, cfg)
    assert not (tmp_path / "run").exists()


def test_alpha_divergence_config_round_trips_and_resumes(tmp_path):
    cfg = _cfg(divergence=alpha_divergence(0.5), n_steps=2, out_dir=str(tmp_path / "run"))
    d = cfg.to_dict()
    assert d["divergence"] == "alpha=0.5"
    again = FDPGConfig.from_dict(json.loads(json.dumps(d)))
    assert get_divergence(again.divergence).name == "alpha=0.5"
    pb = make_toy_problem("scalar")
    train(pb.policy, pb.target, pb.prompts, cfg)
    pc = make_toy_problem("scalar")
    train(pc.policy, pc.target, pc.prompts, FDPGConfig.from_dict({**d, "n_steps": 3}), resume=True)
    assert _steps(tmp_path / "run") == [0, 1, 2]
    with pytest.raises(ValueError, match=r"unknown divergence 'alpha=half'.*'alpha=<a>'"):
        FDPGConfig(divergence="alpha=half")


def test_a_frozen_policy_is_named():
    pb = make_toy_problem("scalar")
    pb.policy.requires_grad_(False)
    with pytest.raises(ValueError, match=r"the policy has no trainable parameter .*requires_grad_\(True\)"):
        train(pb.policy, pb.target, pb.prompts, _cfg())


def test_a_seed_beyond_the_generator_range_is_named():
    with pytest.raises(ValueError, match=r"seed=18446744073709551616 \(allowed: int in \[0, 2\*\*63\)\)"):
        FDPGConfig(seed=2 ** 64)


def test_scorer_with_the_wrong_number_of_rows_still_names_the_factor():
    pb = make_toy_problem("scalar")
    target = Target(pb.target.base) * ScalarFactor("short", lambda s: torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"scorer of factor 'short' returned shape \(3,\); expected \(B,\) with B=8"):
        train(pb.policy, target, pb.prompts, _cfg())


# ----------------------------------------------------------------------------- 7. several processes
def _hang_job(rank, world, store, root):
    """Rank r of 2 gloo processes (the collective of train() that rank 0 waits in while rank 1 hangs)."""
    import time
    from datetime import timedelta

    import torch.distributed as dist

    from fdpg_core import distributed

    torch.set_num_threads(1)
    distributed.HUNG_PROBE_S = 2.0
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    distributed.init_distributed()  # what train() calls first: sets up the probe group
    dist.distributed_c10d._set_pg_timeout(timedelta(seconds=3))  # a short collective timeout for the test
    res = {}
    if rank == 1:
        time.sleep(120)  # hung (killed by the test)
    try:
        distributed.gather_rows(torch.zeros(2))
    except distributed.HungRankError as e:
        res = {"msg": str(e), "hung": e.hung}
    torch.save(res, root / f"rank{rank}.tmp")
    os.replace(root / f"rank{rank}.tmp", root / f"rank{rank}.pt")  # atomic: the test polls the file
    os._exit(0)  # no destroy_process_group: the peer is hung


@pytest.mark.slow
def test_a_hung_rank_is_named_by_rank_0(tmp_path):
    """Rank 1 never reaches a collective: after the collective timeout rank 0 probes the ranks (a monitored barrier
    of a separate gloo group) and names rank 1, instead of reporting only its own gloo timeout."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(_hang_job, args=(2, str(tmp_path / "store"), tmp_path), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and not (tmp_path / "rank0.pt").exists():
            time.sleep(0.2)
    finally:
        for p in ctx.processes:  # rank 1 is still asleep
            p.kill()
            p.join(10)
    res = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert res["hung"] == [1], res
    assert res["msg"].startswith("rank 0 of 2: gather_rows timed out") and "rank(s) [1] never reached it" in \
        res["msg"] and "FDPG_DIST_TIMEOUT_S" in res["msg"]
