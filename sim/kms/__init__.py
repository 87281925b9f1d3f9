"""The local KMS of the simulated world, in moto's split.

`server` is the HTTPS edge and `LocalKMS`; `responses` authenticates and dispatches to the groups of
operations (`management`, `aliases`, `tags`, `rotation`, `grants`, `dataplane`, `asymmetric`,
`macs`, on the shared base in `operations`); `authorizer`, `policy` and `conditions` decide access;
`models` and `records` hold and persist keys, aliases and grants; `keyspecs`, `algorithms`,
`crypto`, `grant_tokens` and `cms_encoder` are pure crypto and formats; `exceptions` has one class
per AWS `__type`. `cli` is `python -m nitrokms.sim kms serve`; `fixtures` holds the pytest fixture
that runs it. See DESIGN.md, "The simulated world".
"""
