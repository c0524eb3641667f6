"""Tasks: what a run measures, one module per task (DESIGN §2).

``glue``: GLUE sequence classification and STS-B regression (encoding, canonical metrics, the
evaluator). Language modelling's evaluator is ``quadapter.evaluation`` (perplexity).
"""
