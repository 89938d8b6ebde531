"""Time one encryption and one decryption of a 200-byte value, AES-GCM against AES-GCM-SIV.

Run: python benchmarks/cipher_speed.py
"""

import os
import platform
import timeit

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

ROUNDS = 200_000


def main() -> None:
    key = os.urandom(32)
    plaintext = os.urandom(200)
    nonce = os.urandom(12)
    associated = b"kf1" + os.urandom(8) + b"\x00\x06global" + b"app.model.field"
    print(
        f"cryptography {cryptography.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}"
    )
    for name, cipher in (("AES-256-GCM", AESGCM(key)), ("AES-256-GCM-SIV", AESGCMSIV(key))):
        sealed = cipher.encrypt(nonce, plaintext, associated)
        encrypt = timeit.timeit(
            "cipher.encrypt(nonce, plaintext, associated)", number=ROUNDS, globals=locals()
        )
        decrypt = timeit.timeit(
            "cipher.decrypt(nonce, sealed, associated)", number=ROUNDS, globals=locals()
        )
        print(
            f"{name:16} encrypt {encrypt / ROUNDS * 1e6:5.2f} us   "
            f"decrypt {decrypt / ROUNDS * 1e6:5.2f} us"
        )


if __name__ == "__main__":
    main()
