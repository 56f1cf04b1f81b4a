"""Attacks on wasmig (issue 17): each test plays the attacker and asserts the attack fails with a
clear one-line error, a non-zero exit, nothing opened that was not granted and nothing lost."""
