"""notebooks/align_your_own_model.ipynb, a teaching notebook (not a numbered experiment): any HF causal LM + a
reward written as a Python function; save/reload.

Static (fast): committed without outputs; a parameters cell papermill reads with its help text; no `!pip`, `%pip`
or sys.path.
Executed (papermill, marked slow; times measured on 2 shared CPU cores):
  * the align notebook at a small size (30-40 s, mostly the kernel's start and imports): the saved folder loads
    with plain `from_pretrained`, its weights differ from the base model's, and sampling it with the notebook's
    seed gives the texts the notebook reported.
"""
import json

import pytest
import torch

from fdpg_core.kit.notebook import NOTEBOOK_DIR, REPO_ROOT, run_notebook
from nbsmoke import check_teaching_notebook


ALIGN = NOTEBOOK_DIR / "align_your_own_model.ipynb"


def test_committed_clean_with_a_parameters_cell():
    check_teaching_notebook(ALIGN)


@pytest.mark.slow
def test_align_your_own_model_small(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fdpg_core import sampling

    out = tmp_path / "aligned"
    # log_floor: b = 0 gets a finite log b, so no update is skipped even when a small batch has no text with b = 1
    params = dict(n_steps=3, batch_size=8, max_new_tokens=12, n_eval=8, n_show=2, lr=1e-3, log_floor=-10.0,
                  out_dir=str(out))
    run_notebook(ALIGN, tmp_path / ALIGN.name, params)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_updates"] == 0 and summary["n_steps"] == 3 and len(summary["texts"]) == 8
    # the saved policy is a plain HF model folder with its tokenizer
    folder = out / "policy"
    tok = AutoTokenizer.from_pretrained(str(folder))
    aligned = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(str(REPO_ROOT / "data/models/reviews"), dtype=torch.float32).eval()
    moved = max(float((u - v).detach().abs().max()) for u, v in zip(aligned.parameters(), base.parameters()))
    assert moved > 1e-4, "training did not change the saved weights"
    assert tok.encode("a good film") == AutoTokenizer.from_pretrained(str(REPO_ROOT / "data/models/reviews")).encode(
        "a good film")
    # sampling the reloaded folder with the notebook's seed gives the texts the notebook reported
    ids, mask, ctx = sampling.repeat_prompts(*sampling.bos_prompts(1, tok.bos_token_id), summary["n_eval"])
    x = sampling.sample(aligned, ids, mask, summary["max_new_tokens"], eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, context_ids=ctx,
                        generator=torch.Generator().manual_seed(summary["eval_seed"]))
    assert sampling.decode(x, tok) == summary["texts"]
