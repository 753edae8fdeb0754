"""The whole phone flow through the Python bindings, against a local stack.

Run by tests/python_bindings.rs with the generated module on PYTHONPATH and
BKV_PROFILE (the client profile's path), BKV_DRIVE (the cloud folder),
BKV_WORK (a scratch folder), BKV_MAX_ATTEMPTS and two devices of one account
(BKV_DEVICE_A / BKV_DEVICE_B: device key hex, then a space, then the
credential). Prints one line per step and "flow ok" at the end; any failure
raises.
"""

import asyncio
import os
import pathlib

from bkv_client import BackupClient, BackupError, KeyProtection, KeyStore, KeyStoreError, VaultState


class DictStore(KeyStore):
    """The app's store: a dict here, the platform keystore on a phone."""

    def __init__(self, device_key: bytes, credential: str):
        self.items = {"device_key": device_key, "credential": credential.encode()}
        self.calls = 0

    def load(self, item):
        self.calls += 1
        return self.items.get(item)

    def save(self, item, value):
        self.calls += 1
        self.items[item] = bytes(value)

    def delete(self, item):
        self.calls += 1
        self.items.pop(item, None)


class BrokenStore(KeyStore):
    def load(self, item):
        raise KeyStoreError.Failed("keystore locked")

    def save(self, item, value):
        raise KeyStoreError.Failed("keystore locked")

    def delete(self, item):
        raise KeyStoreError.Failed("keystore locked")


def device(var):
    key_hex, credential = os.environ[var].split(" ", 1)
    return bytes.fromhex(key_hex), credential


async def expect_error(code, awaitable):
    try:
        await awaitable
    except BackupError.Failed as e:
        assert e.code == code, f"expected {code}, got {e.code}: {e.message}"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


async def main():
    profile = pathlib.Path(os.environ["BKV_PROFILE"]).read_text()
    drive = os.environ["BKV_DRIVE"]
    work = pathlib.Path(os.environ["BKV_WORK"])
    max_attempts = int(os.environ["BKV_MAX_ATTEMPTS"])

    # Phone A turns backup on with a password and backs up a folder.
    store_a = DictStore(*device("BKV_DEVICE_A"))
    a = BackupClient(profile, store_a)
    assert a.device_public_key() == store_a.items["device_key"][32:].hex()
    assert a.backup_state() is None
    await a.enable_with_password("correct horse", drive, 3)
    st = a.backup_state()
    assert st.protection == KeyProtection.PASSWORD and st.keep == 3, st
    assert "backup_key" in store_a.items and "backup_settings" in store_a.items
    chats = work / "chats"
    chats.mkdir()
    (chats / "2026.txt").write_text("hello from phone A")
    info = await a.backup_folder(str(chats))
    assert info.size > 0, info
    assert [b.id for b in await a.list_backups()] == [info.id]
    print("enabled and backed up", info.id)

    # Phone B (same account, new device): a wrong password costs a guess
    # and says how many are left; the right one restores the folder.
    store_b = DictStore(*device("BKV_DEVICE_B"))
    b = BackupClient(profile, store_b)
    e = await expect_error(
        "wrong_password",
        b.restore_with_password("wrong horse", drive, str(work / "restored")),
    )
    assert e.attempts_left == max_attempts - 1, e
    assert b.backup_state() is None, "a failed restore turns nothing on"
    state = await b.vault_state()
    assert state == VaultState.ACTIVE(max_attempts - 1, max_attempts, None), state
    print("wrong password:", e.attempts_left, "attempts left")
    restored = await b.restore_with_password("correct horse", drive, str(work / "restored"))
    text = (pathlib.Path(restored) / "2026.txt").read_text()
    assert text == "hello from phone A", text
    assert store_b.items["backup_key"] == store_a.items["backup_key"]
    # The vault resets the count after it answers a right password (off
    # the reply path, DESIGN.md invariant 2): it lands within moments.
    for _ in range(100):
        state = await b.vault_state()
        if state == VaultState.ACTIVE(max_attempts, max_attempts, None):
            break
        await asyncio.sleep(0.1)
    assert state == VaultState.ACTIVE(max_attempts, max_attempts, None), state
    print("restored on phone B into", restored)

    # Errors carry stable codes: backup already on, a mistyped key.
    await expect_error("local", b.restore_with_password("x", drive, str(work / "again")))
    try:
        BackupClient(profile, BrokenStore()).device_public_key()
        raise AssertionError("a failing keystore must raise")
    except BackupError.Failed as e:
        assert e.code == "storage" and "keystore locked" in e.message, e

    # B turns backup off: the deposit is gone, the key forgotten.
    await b.disable("correct horse")
    assert b.backup_state() is None
    assert "backup_key" not in store_b.items
    state = await b.vault_state()
    assert state == VaultState.NOT_REGISTERED(), state
    # A's next password restore has nothing to recover.
    c_store = DictStore(*device("BKV_DEVICE_A"))
    c = BackupClient(profile, c_store)
    await expect_error(
        "not_registered",
        c.restore_with_password("correct horse", drive, str(work / "restored-2")),
    )
    # The 64-digit key path needs no vault.
    d = BackupClient(profile, DictStore(*device("BKV_DEVICE_B")))
    shown = d.enable_with_key_only(str(work / "drive-2"), 2)
    assert len(shown.replace(" ", "").replace("-", "")) >= 64, shown
    await d.backup_folder(str(chats))
    e2 = BackupClient(profile, DictStore(*device("BKV_DEVICE_A")))
    await expect_error("bad_key", e2.restore_with_key("123", str(work / "drive-2"), str(work / "r3")))
    r3 = await e2.restore_with_key(shown, str(work / "drive-2"), str(work / "r3"))
    assert (pathlib.Path(r3) / "2026.txt").read_text() == "hello from phone A"
    assert e2.backup_state().protection == KeyProtection.KEY_ONLY
    print("disabled; key-only backup restored with the 64-digit key")
    print("flow ok")


asyncio.run(main())
