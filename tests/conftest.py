"""Project-wide test settings."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Shared CI machines are noisy (2 cores, other work running): never fail on wall-clock deadlines,
# and keep example counts to what each test asks for.
settings.register_profile(
    "nitrokms", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("nitrokms")
