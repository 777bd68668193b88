"""Errors that the CLI turns into one clear line and an exit code.

Exit codes are part of the interface: 0 success, 1 a verification, budget or device
failure, 2 bad usage or bad input.
"""
from __future__ import annotations


class EdgepruneError(Exception):
    """Base class: the message is shown to the user as a single line."""

    exit_code = 2


class InputError(EdgepruneError):
    """The user's input (model, data, profile, flags) cannot be used. Exit 2."""

    exit_code = 2


class UnsafeModelError(InputError):
    """The model needs code to load (Lambda, custom objects) and safe mode refused it."""


class BudgetError(EdgepruneError):
    """The artifact breaks a budget of the device profile. Exit 1."""

    exit_code = 1


class VerificationError(EdgepruneError):
    """Accuracy or latency verification failed. Exit 1."""

    exit_code = 1


class DeviceError(EdgepruneError):
    """The device could not be reached or the runner failed on it. Exit 1."""

    exit_code = 1
