"""Data-parallel f-DPG on torch.distributed (gloo, 2 CPU processes): given the same samples, 2 processes with B/2
rows each give the same Ẑ, baseline, loss, metrics and parameters as 1 process with B rows; every rank holds the
same values; rank seeds are seed + 1000·rank; resume (same world size) is exact; a real torchrun run raises the
constraint rate with one results file; a rank that raises stops the whole job with its error."""
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fdpg_core import distributed
from fdpg_core.kit.notebook import kernel_env
from fdpg_core.sampling import sample
from fdpg_core.targets import BinaryFactor, Target
from fdpg_core.kit.toy import make_toy_problem
from fdpg_core.train import FDPGConfig, NonFiniteLossError, train

ROOT = Path(__file__).resolve().parents[1]
W = 2  # processes
SEED = 3
# every run: conditional toy with 2 contexts (one Ẑ_c each), global batch 16
INVARIANCE = {  # samples_per_context=8: rank 0 samples only context 0, rank 1 only context 1 (Ẑ_1 must be gathered)
    "online": dict(divergence="js", baseline="ema", baseline_ema=0.5, samples_per_context=8, grad_accum=2),
    "offline": dict(divergence="kl", baseline="window", baseline_window=2, proposal="offline", samples_per_context=4,
                    max_grad_norm=0.05),
}
DROP = {"time/step_s"}  # the only rank-local record key


pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: avoid oversubscription


def _cfg(**kw):
    base = dict(batch_size=16, n_steps=3, max_new_tokens=3, lr=5e-3, warmup_steps=0, adam_eps=1e-2, progress=False,
                seed=SEED)
    base.update(kw)
    return FDPGConfig(**base)


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _strip(hist):
    return [{k: v for k, v in r.items() if k not in DROP} for r in hist]


def _conditional():
    return make_toy_problem("conditional", n_contexts=2, beta=0.5)


def shared_sampler(seed):
    """Draws the GLOBAL batch on every rank with one generator (same seed everywhere) and returns this rank's rows:
    the union of the ranks' samples is then exactly the batch one process draws with that generator."""
    g = torch.Generator().manual_seed(seed)

    def sampler(model, prompt_ids, prompt_mask, max_new_tokens, *, context_ids, generator, **kw):
        ids, mask, ctx = distributed.gather_rows(prompt_ids, prompt_mask, context_ids)  # (B, Tp) ×2, (B,)
        s = sample(model, ids, mask, max_new_tokens, context_ids=ctx, generator=g, **kw)
        n, r = prompt_ids.shape[0], distributed.rank()
        return s.index(slice(r * n, (r + 1) * n))
    return sampler


def failing_problem(fail_rank=1, fail_call=2):
    """Toy binary problem whose scorer raises on rank `fail_rank` at its `fail_call`-th call (torchrun worker)."""
    pb = make_toy_problem("binary")
    calls = []

    def b(s):
        calls.append(1)
        if int(os.environ.get("RANK", "0")) == fail_rank and len(calls) >= fail_call:
            raise RuntimeError(f"boom on rank {fail_rank} at scorer call {len(calls)}")
        return ((s.tokens == 0) & s.mask).any(-1)
    return dict(policy=pb.policy, target=Target(pb.target.base) * BinaryFactor("b", b), prompts=pb.prompts)


# ------------------------------------------------------------------------------------------ jobs (1 or W ranks)
def _invariance_job(kind, out_dir):
    pb = _conditional()
    hist = train(pb.policy, pb.target, pb.prompts, _cfg(out_dir=str(out_dir), **INVARIANCE[kind]),
                 sampler=shared_sampler(11))
    return dict(hist=hist, params=_params(pb.policy))


def _resume_job(root):
    """4 steps uninterrupted (A) vs 2 steps then resume to 4 (B), default per-rank sampling generators."""
    common = dict(divergence="js", samples_per_context=4, checkpoint_every=2, warmup_steps=2)
    first = []

    def recording(*a, **kw):  # the default sampler, recording the first batch
        s = sample(*a, **kw)
        if not first:
            first.append(s.tokens.clone())
        return s
    pa = _conditional()
    ha = train(pa.policy, pa.target, pa.prompts, _cfg(n_steps=4, out_dir=str(root / "A"), **common), sampler=recording)
    pb = _conditional()
    train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=2, out_dir=str(root / "B"), **common))
    pc = _conditional()
    hc = train(pc.policy, pc.target, pc.prompts, _cfg(n_steps=4, out_dir=str(root / "B"), **common), resume=True)
    return dict(ha=ha, pa=_params(pa.policy), hc=hc, pc=_params(pc.policy), tokens0=first[0])


def _nonfinite_job(out_dir):
    """rkl without a log_b floor: from the third scorer call rank 1 sees one sample with b = 0 (f′ = −∞)."""
    pb = make_toy_problem("scalar")
    calls = []

    def b(s):
        calls.append(1)
        out = torch.ones(len(s), dtype=torch.bool)
        out[0] = not (distributed.rank() == 1 and len(calls) > 2)
        return out
    try:
        train(pb.policy, Target(pb.target.base) * BinaryFactor("b", b), pb.prompts,
              _cfg(divergence="rkl", n_steps=5, checkpoint_every=1, out_dir=str(out_dir)))
    except NonFiniteLossError as e:
        return str(e)
    return None


def _nan_log_q_job(out_dir):
    """Rank 1's sampler returns one NaN log q in its second batch: checked on the gathered columns, before Ẑ."""
    batches = []

    def sampler(*a, **kw):
        s = sample(*a, **kw)
        batches.append(1)
        if distributed.rank() == 1 and len(batches) == 2:
            s.log_q[3] = float("nan")
        return s
    pb = make_toy_problem("scalar")
    try:
        train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=4, checkpoint_every=1, out_dir=str(out_dir)),
              sampler=sampler)
    except NonFiniteLossError as e:
        return str(e)
    return None


def _batch_split_job():
    pb = _conditional()
    try:
        train(pb.policy, pb.target, pb.prompts, _cfg(batch_size=15, grad_accum=3, n_steps=1))
    except ValueError as e:
        return str(e)
    return None


def _rank_main(rank, world, store, root):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    res = {kind: _invariance_job(kind, root / f"{kind}_w{world}") for kind in INVARIANCE}
    res["resume"] = _resume_job(root / "resume")
    res["nonfinite"] = _nonfinite_job(root / "nonfinite")
    res["nan_log_q"] = _nan_log_q_job(root / "nan_log_q")
    res["batch_split"] = _batch_split_job()
    torch.save(res, root / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every job above run by 2 gloo processes (torch.multiprocessing spawn, FileStore); their results per rank."""
    root = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(_rank_main, args=(W, str(root / "store"), root), nprocs=W, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):  # re-raises a rank's exception (and terminates the others)
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2 gloo processes did not finish in 120 s (a hang)")
    return root, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(W)]


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("kind", list(INVARIANCE))
def test_two_processes_equal_one_process_on_the_same_samples(two_ranks, tmp_path, kind):
    """Same union of samples → same per-context Ẑ (running sums), baseline, loss, grad norm, metrics and parameters
    after 3 steps, within fp32 tolerance; and bitwise the same values on both ranks. Adam is not scale-invariant
    with adam_eps=1e-2, so a gradient averaged (÷W) instead of summed changes the parameters too."""
    root, res = two_ranks
    one = _invariance_job(kind, tmp_path / "w1")
    r0, r1 = res[0][kind], res[1][kind]
    assert _strip(r0["hist"]) == _strip(r1["hist"])  # every rank sees the same records
    assert torch.equal(r0["params"], r1["params"])  # and applies the same update
    assert len(one["hist"]) == len(r0["hist"]) == 3
    for key in one["hist"][0]:
        if key in DROP:
            continue
        want, got = [r[key] for r in one["hist"]], [r[key] for r in r0["hist"]]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), key
    assert torch.allclose(r0["params"], one["params"], atol=1e-6)
    assert not torch.allclose(one["params"], _params(_conditional().policy), atol=1e-4)  # training moved θ
    ck1 = torch.load(tmp_path / "w1" / "checkpoint.pt", weights_only=False)
    ck2 = torch.load(root / f"{kind}_w{W}" / "checkpoint.pt", weights_only=False)
    assert ck2["world_size"] == W and len(ck2["rng_per_rank"]) == W
    s1, s2 = ck1["state"], ck2["state"]
    assert torch.isfinite(s1["log_S"]).all() and torch.equal(s1["count"], s2["count"])  # both contexts seen
    for key in ("log_S", "b_ema", "b_buf"):  # Ẑ_c's running sums and the baseline statistics
        assert torch.allclose(s1[key], s2[key], rtol=1e-6, atol=1e-7), key
    for key in ("b_n", "samples_seen", "skipped", "replaced"):
        assert s1[key] == s2[key], key


def test_rank_seeds_and_exact_resume_with_the_same_world_size(two_ranks, tmp_path):
    """Rank r draws with a generator seeded seed + 1000·r (its first batch is reproduced here); a run stopped at
    step 2 and resumed (each rank's RNG state restored) equals the uninterrupted one bitwise; a checkpoint of 2
    processes refuses a 1-process resume."""
    root, res = two_ranks
    pb = _conditional()
    rows = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1] * 2)  # step 0, samples_per_context=4: both ranks hold both contexts
    for r in range(W):
        loc = rows[r * 8:(r + 1) * 8]
        g = torch.Generator().manual_seed(distributed.rank_seed(SEED, r))
        want = sample(pb.policy, pb.prompts[0][loc], pb.prompts[1][loc], 3, eos_token_id=pb.eos_token_id,
                      pad_token_id=pb.pad_token_id, context_ids=loc, generator=g)
        assert torch.equal(res[r]["resume"]["tokens0"], want.tokens), r
    assert not torch.equal(res[0]["resume"]["tokens0"], res[1]["resume"]["tokens0"])  # same prompts, other draws
    for r in range(W):
        a = res[r]["resume"]
        assert torch.equal(a["pa"], a["pc"]), r
        assert _strip(a["ha"]) == _strip(a["hc"]), r
    with open(root / "resume" / "B" / "history.jsonl") as fh:
        assert [json.loads(line)["step"] for line in fh] == [0, 1, 2, 3]  # one writer, truncated and continued
    assert sorted(os.listdir(root / "resume" / "A")) == ["checkpoint.pt", "history.jsonl"]
    pc = _conditional()
    with pytest.raises(ValueError, match=r"world_size=2.*world_size=1"):
        train(pc.policy, pc.target, pc.prompts, _cfg(divergence="js", samples_per_context=4, checkpoint_every=2,
                                                     warmup_steps=2, n_steps=6, out_dir=str(root / "resume" / "A")),
              resume=True)


def test_non_finite_on_one_rank_stops_every_rank_and_batch_split_is_checked(two_ranks):
    root, res = two_ranks
    msgs = [res[r]["nonfinite"] for r in range(W)]
    assert msgs[0] == msgs[1] and msgs[0] is not None
    assert "step 2" in msgs[0] and "(on rank 1 of 2)" in msgs[0] and "log_floor" in msgs[0]
    ck = torch.load(root / "nonfinite" / "checkpoint.pt", weights_only=False)
    assert ck["state"]["step"] == 2  # the last good checkpoint is kept
    for r in range(W):
        assert "batch_size=15" in res[r]["batch_split"] and "world_size · grad_accum = 2 · 3 = 6" in \
            res[r]["batch_split"]


def test_a_non_finite_log_q_on_one_rank_stops_every_rank_naming_it(two_ranks):
    root, res = two_ranks
    msgs = [res[r]["nan_log_q"] for r in range(W)]
    assert msgs[0] == msgs[1] and msgs[0] is not None
    assert "step 1: log q of the samples is not finite on 1 of 16 samples (first on rank 1 of 2)" in msgs[0]
    ck = torch.load(root / "nan_log_q" / "checkpoint.pt", weights_only=False)
    assert ck["state"]["step"] == 1 and torch.isfinite(ck["state"]["log_S"]).all()  # Ẑ never saw the NaN
    with open(root / "nan_log_q" / "history.jsonl") as fh:
        assert [json.loads(line)["step"] for line in fh] == [0]


def _launch(worker_args, timeout):
    """scripts/launch_torchrun.py (it execs torchrun); on timeout torchrun is stopped with its workers (no orphan
    keeps a core) and the test fails."""
    env = kernel_env()
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, str(ROOT / "scripts" / "launch_torchrun.py"), "--nproc", str(W), "--", *worker_args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its workers (each in its own session) on SIGTERM
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s (a hang):\n{(out + err)[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_torchrun_two_processes_raise_the_constraint_rate_and_write_one_results_file(tmp_path):
    """p ∝ a·b, b = 1 iff word 0 appears (E_a[b] ≈ 0.18). 20 steps of js on 2 gloo processes (16 rows each)."""
    out = tmp_path / "run"
    n_steps, B = 20, 32
    sets = dict(divergence="js", n_steps=n_steps, batch_size=B, lr=0.01, warmup_steps=0, max_new_tokens=3,
                checkpoint_every=10, out_dir=str(out))
    proc = _launch(["--problem", "fdpg_core.kit.toy:make_toy_problem", "--problem-kwargs", '{"kind": "binary"}',
                    *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]], timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "history.jsonl"]  # rank 0 alone writes
    with open(out / "history.jsonl") as fh:
        hist = [json.loads(line) for line in fh]
    assert [r["step"] for r in hist] == list(range(n_steps))  # each step once: one writer
    assert proc.stdout.count("fdpg-final ") == 1
    assert hist[-1]["train/samples_seen"] == n_steps * B  # the global batch
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["world_size"] == W and ck["state"]["step"] == n_steps
    pb = make_toy_problem("binary")
    b = torch.isfinite(pb.log_p[0])  # b(x) = 1 iff p(x) > 0, over the 40 sequences

    def rate():  # exact E_π[b]
        with torch.no_grad():
            return float(pb.log_pi()[0].exp()[b].sum())
    before = rate()
    pb.policy.load_state_dict(ck["policy"])
    after = rate()
    assert before < 0.25 and after > 0.8, (before, after)
    # the logged batch estimates of E_π[b] (SNIS over the global batch of 32): a at step 0, trained at the end
    late = sum(r["align/has_word0"] for r in hist[-5:]) / 5
    assert hist[0]["align/has_word0"] < 0.45 and late > 0.8, (hist[0]["align/has_word0"], late)


def test_a_rank_that_raises_stops_the_whole_job_with_its_error(tmp_path):
    """Rank 1 raises at its second scoring (step 1) while rank 0 waits in a collective: torchrun must end the job
    (non-zero exit) within the timeout, and its failure report must carry rank 1's error. 10⁵ steps: a job that
    does not stop fails this test by timing out."""
    t0 = time.monotonic()
    proc = _launch(["--problem", f"{Path(__file__).resolve()}:failing_problem",
                    "--problem-kwargs", '{"fail_rank": 1, "fail_call": 2}', "--set", "n_steps=100000",
                    "--set", "batch_size=16", "--set", "max_new_tokens=3", "--set", f"out_dir={tmp_path / 'run'}"],
                   timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    report = out.split("fdpg_core.kit.torchrun FAILED")[-1]  # torchrun's summary of the failed job
    assert "RuntimeError: boom on rank 1 at scorer call 2" in report, out[-4000:]
    assert time.monotonic() - t0 < 60
