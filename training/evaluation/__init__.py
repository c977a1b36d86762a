"""Model evaluation for `tuneserve evaluate` and `tuneserve human-eval`.

Modules: `metrics` (pure metric functions), `predictor` (the Predictor protocol; `local` and
`endpoint` implementations), `datasets` (rows from prepared dirs or raw files), `prompts`
(the one prompt format), `tasks` (task runners), `report`/`plots`/`render` (report files),
`compare` (paired bootstrap comparison), `runner` (evaluate/compare with tracking) and
`human` / `human_stats` (blinded human evaluation sheets and their analysis).

    from training.evaluation.runner import EvalConfig, evaluate
    result, out = evaluate(EvalConfig(model="artifacts/a", data="data/prepared/banking77"))
"""
