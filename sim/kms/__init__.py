"""The local KMS of the simulated world (moto's split: responses / models / crypto / exceptions).

`server.LocalKMS` runs it in-process; `cli` is `python -m nitrokms.sim kms serve`; `fixtures`
holds the pytest fixture that runs that subprocess. See DESIGN.md, "The simulated world".
"""
