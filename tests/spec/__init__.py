"""Helpers for running the WebAssembly spec testsuite (``.wast`` scripts) against wasmig."""
