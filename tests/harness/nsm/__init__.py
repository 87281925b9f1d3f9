"""The simulated Nitro Secure Module: simulator, unix-socket server, preload library, CLI.

`SimulatedNSM(state_dir)` runs a simulator and exposes `.env` for child processes; the preload
library `build/libnsmsim.so` (`make build`) makes their open("/dev/nsm") reach it. `pki` signs the
attestation documents.
"""
