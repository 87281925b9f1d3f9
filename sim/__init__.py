"""The simulated world (the `sim` extra): a simulated NSM device behind `/dev/nsm`, a local KMS
that enforces attestation policies, and the orchestration behind `make demo`.

Never part of the enclave image; production modules never import it.
"""
