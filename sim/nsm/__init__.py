"""The simulated Nitro Secure Module: simulator, unix-socket server, preload library, CLI.

`SimulatedNSM(state_dir)` runs a simulator and exposes `.env` for child processes; the preload
library (`_preload*.so`, built with the package from `preload.c`) makes their open("/dev/nsm")
reach it. `pki` signs the attestation documents.
"""
