"""`python -m nitrokms.sim demo [--keep] [--workdir DIR]` (`make demo`): the whole product in one
narrated run.

Starts a `World` (local KMS, relay, enclave under the simulated NSM in its own network namespace,
credential provider), then walks through the attested flow step by step and checks each step did
what the narration says. Exit 0 when every step behaved; 1 (with the step, what happened instead
and where the logs are) when one did not. The work directory is removed at the end unless `--keep`
is given or a step failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Final

from nitrokms.parent.rpc import AccessDeniedError, EnclaveClient, RPCError
from nitrokms.sim.world import World, WorldError

WIDTH: Final = 100
MESSAGE: Final = b"Meet at the usual place at noon."
CONTEXT: Final = {"app": "nitrokms-demo"}
DENIAL_TIMEOUT_S: Final = 30.0


class DemoFailed(Exception):
    """A step did not behave as narrated; the message says what happened instead."""


class Narrator:
    def __init__(self) -> None:
        self.step = 0
        self.started = time.monotonic()

    def heading(self, title: str) -> None:
        self.step += 1
        print(f"\n{self.step}. {title}", flush=True)

    def say(self, text: str) -> None:
        print(textwrap.fill(text, WIDTH, initial_indent="   ", subsequent_indent="   "), flush=True)

    def show(self, label: str, value: str) -> None:
        lines = textwrap.wrap(
            value,
            WIDTH,
            initial_indent=f"     {label}: ",
            subsequent_indent="       ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        print("\n".join(lines) or f"     {label}:", flush=True)

    def block(self, text: str) -> None:
        print(textwrap.indent(text, "     "), flush=True)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


def other_measurements() -> dict[int, bytes]:
    """PCR0/1/2 of "another image": what a modified build would measure."""
    return {
        i: hashlib.sha384(f"some other enclave image PCR{i}".encode()).digest() for i in (0, 1, 2)
    }


def step_kms(say: Narrator, world: World) -> None:
    say.heading("The local KMS is up.")
    say.show("endpoint", world.kms_url)
    say.say(
        "It speaks the AWS KMS JSON protocol over HTTPS, checks SigV4 signatures, keeps keys on "
        "disk and evaluates real key policies, including the kms:RecipientAttestation:PCR<n> "
        "conditions. Its certificate is for kms.us-east-1.amazonaws.com, so the enclave can "
        "verify it exactly as it verifies AWS."
    )


def step_key(say: Narrator, world: World) -> str:
    say.heading("A key whose policy pins the enclave's measurements, from the policy generator.")
    policy = world.key_policy()
    key = world.create_key(policy, "nitrokms demo")
    statement = next(s for s in policy["Statement"] if s["Sid"] == "EnclaveDataPlane")
    say.show("key", key)
    say.say(
        f"Statement {statement['Sid']!r} lets the parent's role ({statement['Principal']['AWS']}) "
        f"call {' and '.join(statement['Action'])} only under this condition:"
    )
    say.block(json.dumps(statement["Condition"], indent=2))
    say.say(
        "KMS checks these values against the attestation document the enclave signs with the "
        "NSM, not against anything the parent says. The other statement only administers the "
        "key; nothing grants the data-plane actions without the condition."
    )
    return key


def step_enclave(say: Narrator, world: World) -> None:
    say.heading("The enclave service is up, isolated.")
    with world.client() as client:
        described = client.describe()
        health = client.health()
    check(not described.debug_mode, "the enclave reports debug mode")
    check(
        all(described.pcrs[i].hex() == world.measurements[i] for i in (0, 1, 2)),
        "the enclave's PCR0-2 differ from the world's measurements",
    )
    check(health.credentials_present, "the credential provider did not push credentials")
    say.show("module", described.module_id)
    say.show("PCR0", described.pcrs[0].hex())
    isolation = {
        "netns": "its own network namespace (unshare -n), with only a loopback interface",
        "userns": "its own user and network namespace (unshare -rn), with only loopback",
        "none": "NO namespace: none could be made on this machine",
    }[world.isolation_used]
    say.say(
        f"It runs under the simulated NSM (standing in for /dev/nsm) in {isolation}. Its only "
        "way out is the relay's unix socket, the stand-in for vsock."
    )
    if world.isolation_used != "none":
        probe = world.probe_direct_kms()
        check(probe != "connected", "the enclave reached the KMS port directly")
        say.show("direct TCP to the KMS port from inside", probe)
    say.say(
        "The credential provider (nitrokms credentials) pushed it the parent role's credentials "
        "over RPC; the enclave never sees them on a command line or in its environment."
    )


def step_generate(say: Narrator, world: World, key: str) -> tuple[str, bytes]:
    say.heading("Attested GenerateDataKey: a handle and a CiphertextBlob; the key stays inside.")
    kms_log = world.process("kms")
    mark = kms_log.mark()
    with world.client() as client:
        module = client.describe().module_id
        made = client.generate_data_key(key, key_spec="AES_256", encryption_context=CONTEXT)
    fields = [f.name for f in dataclasses.fields(made)]
    check("plaintext" not in fields, "the reply type has a plaintext field")
    say.show("reply fields", ", ".join(fields))
    say.show("handle", made.handle)
    say.show("CiphertextBlob", f"{len(made.ciphertext_blob)} bytes")
    verified = kms_log.wait_for_line(f"Recipient document from {module}", after=mark)
    say.show("KMS log", verified.split(" INFO ", 1)[-1])
    say.say(
        "The enclave sent KMS an attestation document holding a fresh RSA public key. KMS "
        "therefore answered with CiphertextForRecipient (the data key enveloped to that key, "
        "opened only inside the enclave) and no Plaintext. The parent got a handle and the "
        "encrypted blob, nothing it could decrypt."
    )
    direct = world.kms_as_parent()
    try:
        direct.generate_data_key(KeyId=key, KeySpec="AES_256")
    except direct.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        check(code == "AccessDeniedException", f"direct call failed with {code}")
    else:
        raise DemoFailed("the parent got a plaintext data key straight from KMS")
    say.say(
        "The same credentials used by the parent directly, without an attestation document: "
        "AccessDeniedException. Holding the credentials is not enough to get the key."
    )
    return made.handle, made.ciphertext_blob


def step_seal(say: Narrator, world: World, handle: str) -> None:
    say.heading("Seal, then Unseal, a message.")
    with world.client() as client:
        sealed = client.seal(MESSAGE, handle=handle, encryption_context=CONTEXT)
        opened = client.unseal(sealed.envelope, encryption_context=CONTEXT)
    check(opened == MESSAGE, "Unseal returned something else than what was sealed")
    check(MESSAGE not in sealed.envelope, "the envelope holds the message in clear")
    say.show("message", MESSAGE.decode())
    say.show("envelope", f"{len(sealed.envelope)} bytes (AES-256-GCM, data key's CiphertextBlob)")
    say.show("unsealed", opened.decode())
    say.say(
        "The enclave encrypted with the data key it holds. The envelope carries the key only "
        "as KMS ciphertext, so any enclave with the same measurements can open it later through "
        "an attested Decrypt; nothing else can."
    )


def step_denied(say: Narrator, world: World, key: str) -> None:
    say.heading("The same request from other enclaves: denied, and why.")
    runs: list[tuple[str, dict[str, Any], str]] = [
        ("other-image", {"measurements": other_measurements()}, "an enclave built from other code"),
        ("debug-mode", {"debug": True}, "our image started with --debug-mode (PCR0-2 all zero)"),
    ]
    for name, options, description in runs:
        enclave = world.spawn_enclave(name, **options)
        kms_log = world.process("kms")
        mark = kms_log.mark()
        try:
            with EnclaveClient(enclave.address) as client:
                pcr0 = client.describe().pcrs[0].hex()
                try:
                    client.generate_data_key(key, key_spec="AES_256", encryption_context=CONTEXT)
                except AccessDeniedError as exc:
                    denied: RPCError = exc
                else:
                    raise DemoFailed(f"{description} got a data key")
        finally:
            enclave.stop()
        denial = kms_log.wait_for_line("AccessDenied:", after=mark, timeout_s=DENIAL_TIMEOUT_S)
        check("PCR0" in denial and pcr0 in denial, "the KMS denial does not name PCR0's value")
        say.say(f"{description[0].upper()}{description[1:]} (PCR0 {pcr0[:16]}...):")
        say.show("client got", f"{denied.code}: {denied.message}")
        say.show("KMS log", denial.split(" WARNING ", 1)[-1])
    say.say(
        "In both cases the attestation document was genuine and verified, but its PCR0 is not the "
        "value the key policy pins, so no statement allowed the call. A debug-mode enclave's "
        "zeroed PCRs would match any image's debug run; the generator refuses to allow them "
        "unless asked with --allow-debug."
    )


def run_demo(workdir: Path) -> None:
    """Raises DemoFailed, WorldError or an RPC/process error when a step misbehaves."""
    say = Narrator()
    print("nitrokms demo: attested KMS data keys for a (simulated) Nitro Enclave", flush=True)
    with World(workdir) as world:
        step_kms(say, world)
        key = step_key(say, world)
        step_enclave(say, world)
        handle, _ = step_generate(say, world, key)
        step_seal(say, world, handle)
        step_denied(say, world, key)
    print(f"\nAll {say.step} steps behaved as described ({time.monotonic() - say.started:.1f} s).")
    print(
        "To keep such a world running for your own code, the AWS CLI or nitrokms call: "
        "python -m nitrokms.sim world up (README: Run the simulated world yourself)."
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nitrokms.sim demo",
        description="Run the simulated world and narrate an attested key fetch, step by step.",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--workdir", type=Path, help="use this directory (kept) instead of a temp")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nitrokms-demo-"))
    keep = args.keep or args.workdir is not None
    failure = None
    try:
        run_demo(workdir)
    except DemoFailed as exc:
        failure = f"the step did not behave as described: {exc}"
    except (WorldError, RPCError, RuntimeError, OSError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    if failure is not None:
        print(f"\ndemo FAILED: {failure}", file=sys.stderr)
        print(f"logs kept in {workdir / 'logs'}", file=sys.stderr)
        return 1
    if keep:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
