"""Randomness that protects privacy: from the operating system's CSPRNG, known to no one else.

DP noise only protects if whoever sees the noised result cannot regenerate the
noise. A generator seeded from anything another party knows (a run's seed, a
node id, a round number) lets that party subtract the noise again. So every
draw that protects privacy comes from a :class:`SecureRandom`: a ChaCha20
keystream (``cryptography``, i.e. OpenSSL) keyed with 256 bits from
``os.urandom``, created on the party it protects, never seeded, never
serialised and never written to a checkpoint.

Gaussians come from the keystream's uniforms by the Box-Muller transform, in
float64; uniforms carry 53 random bits each and are never exactly 0.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["SecureRandom"]

_KEY_BYTES = 32  # ChaCha20's 256-bit key
_NONCE_BYTES = 16


class SecureRandom:
    """A cryptographically secure random stream, keyed from OS entropy on creation.

    Not picklable (and so never checkpointed): a copy would repeat its draws.
    """

    def __init__(self) -> None:
        key, nonce = os.urandom(_KEY_BYTES), os.urandom(_NONCE_BYTES)
        self._stream = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()

    def random_bytes(self, n: int) -> bytes:
        """``n`` bytes of the keystream."""
        return self._stream.update(bytes(n))

    def uniform(self, size: int | tuple[int, ...]) -> np.ndarray:
        """Float64 uniforms in the open interval (0, 1), 53 random bits each."""
        count = int(np.prod(size))
        words = np.frombuffer(self.random_bytes(8 * count), dtype=np.uint64)
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def normal(self, size: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        """Float64 Gaussians N(0, std^2) (Box-Muller on :meth:`uniform`)."""
        shape = (size,) if isinstance(size, int) else tuple(size)
        count = int(np.prod(shape))
        half = (count + 1) // 2
        u1, u2 = self.uniform(half), self.uniform(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * np.pi * u2
        values = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
        return (std * values).reshape(shape)

    def bernoulli(self, size: int, p: float) -> np.ndarray:
        """Booleans, each True with probability ``p`` (Poisson sampling of a batch)."""
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        return self.uniform(size) < p

    def integers(self, high: int, size: int) -> np.ndarray:
        """Int64 values uniform in [0, high) (rejection-free for the sizes fedpriv uses:
        the bias of a 64-bit draw modulo ``high`` is below 2**-40 for high < 2**24)."""
        if not 0 < high < 2**24:
            raise ValueError(f"high must be in (0, 2**24), got {high}")
        words = np.frombuffer(self.random_bytes(8 * size), dtype=np.uint64)
        return (words % np.uint64(high)).astype(np.int64)

    def __reduce__(self) -> Any:
        raise TypeError(
            "a SecureRandom is never pickled, copied or checkpointed: a copy would repeat its draws"
        )

    def __deepcopy__(self, memo: dict) -> Any:
        self.__reduce__()
