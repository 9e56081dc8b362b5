"""``vecna_async.signing``: the Signer, what a task's signature covers, signed bodies on the wire
and the ``signing_keys`` settings."""

from __future__ import annotations

import msgspec
import pytest

from vecna_async import Config, ConfigError, InvalidSignature, Signature
from vecna_async.messages import (
    CHORD_RESULTS_MARK,
    PeriodicDefinition,
    TaskMessage,
    decode_task,
    encode,
    periodic_decoder,
)
from vecna_async.signing import (
    Signer,
    key_id,
    sign_definition,
    signed_body,
    task_payload,
    task_problem,
    verify_definition,
)
from vecna_async.tasks.wire import outgoing, prepare, split_for_results

K1 = "first-key-0123456789abcdef"
K2 = "second-key-0123456789abcdef"
K3 = "third-key-0123456789abcdef"


def message(**kw: object) -> TaskMessage:
    fields: dict[str, object] = {"id": "t1", "name": "add", "queue": "q", "args": [1, 2]}
    fields.update(kw)
    return TaskMessage(**fields)  # type: ignore[arg-type]


# -- Signer --------------------------------------------------------------------------------------


def test_first_key_signs_every_key_verifies() -> None:
    old, rotated = Signer([K1]), Signer([K2, K1])
    sig = old.sign(b"payload")
    assert sig.startswith(key_id(K1) + ".")
    assert rotated.verify(b"payload", sig)
    assert rotated.sign(b"payload").startswith(key_id(K2) + ".")
    assert not old.verify(b"payload", rotated.sign(b"payload"))


@pytest.mark.parametrize(
    ("sig", "words"),
    [
        ("", ["unsigned"]),
        ("nodot", ["none of the 2 configured"]),
        (f"{key_id(K3)}.abc", [key_id(K3), "none of"]),
        (f"{key_id(K1)}.AAAA", ["altered", key_id(K1)]),
        (f"{key_id(K1)}.\ud800é", ["altered"]),
    ],
)
def test_problem_says_why(sig: str, words: list[str]) -> None:
    problem = Signer([K1, K2]).problem(b"payload", sig)
    assert problem is not None
    for word in words:
        assert word in problem
    assert K1 not in problem
    assert K2 not in problem


def test_tampered_payload_fails() -> None:
    s = Signer([K1])
    sig = s.sign(b'{"args":[1,2]}')
    assert s.verify(b'{"args":[1,2]}', sig)
    assert not s.verify(b'{"args":[1,3]}', sig)


def test_repr_and_key_ids_never_show_keys() -> None:
    s = Signer([K1, K2, K1])
    assert s.key_ids == [key_id(K1), key_id(K2)]
    assert K1 not in repr(s)
    assert K2 not in repr(s)
    assert len(key_id(K1)) == 8


def test_from_keys_empty_is_no_signing() -> None:
    assert Signer.from_keys([]) is None
    assert isinstance(Signer.from_keys([K1]), Signer)
    with pytest.raises(ValueError, match="at least one key"):
        Signer([])


# -- task messages ---------------------------------------------------------------------------------


def test_signed_body_is_the_message_encoded_with_its_sig() -> None:
    s = Signer([K1])
    msg = message(kwargs={"x": [1.5, None, "é"]}, on_success=[message(id="t2", name="cb")])
    body = signed_body(msg, s)
    decoded = decode_task(body)
    assert body == encode(msgspec.structs.replace(msg, sig=decoded.sig))
    assert decoded.sig == s.sign(encode(msg))
    assert task_payload(decoded) == encode(msg)
    assert task_problem(s, decoded, body) is None
    assert signed_body(decoded, s) == body  # re-signing a signed message replaces its sig


def test_verification_falls_back_to_re_encoding() -> None:
    """A body not laid out as we make them (another encoder, extra spaces) is verified on its
    canonical encoding."""
    s = Signer([K1])
    body = signed_body(message(), s)
    spaced = body.replace(b'"args":[1,2]', b'"args": [1, 2]')
    assert task_problem(s, decode_task(spaced), spaced) is None
    assert task_problem(s, decode_task(body[:-1] + b" }"), body[:-1] + b" }") is None


def test_unsigned_and_tampered_task_problems() -> None:
    s = Signer([K1])
    plain = encode(message())
    assert task_problem(s, decode_task(plain), plain) == "the message is unsigned"
    body = signed_body(message(), s)
    tampered = body.replace(b'"args":[1,2]', b'"args":[1,3]')
    problem = task_problem(s, decode_task(tampered), tampered)
    assert problem is not None
    assert "altered" in problem
    other = signed_body(message(), Signer([K3]))
    problem = task_problem(s, decode_task(other), other)
    assert problem is not None
    assert key_id(K3) in problem


def test_outgoing_signs_only_with_a_signer() -> None:
    msg = prepare(Signature("add", args=[1, 2]), "q")
    plain = outgoing(msg, 1 << 20)
    assert plain.body == encode(msg)
    assert b'"sig"' not in plain.body
    assert b"chord_args" not in plain.body
    signed = outgoing(msg, 1 << 20, Signer([K1]))
    assert task_problem(Signer([K2, K1]), decode_task(signed.body), signed.body) is None


def test_old_messages_without_the_new_fields_decode() -> None:
    body = b'{"v":1,"id":"t1","name":"add","queue":"q","args":[1]}'
    msg = decode_task(body)
    assert (msg.sig, msg.chord_args) == ("", -1)


@pytest.mark.parametrize("immutable", [False, True])
@pytest.mark.parametrize("own_args", [[], ["tag", 7]])
def test_chord_template_signature_covers_its_own_args(
    own_args: list[object], immutable: bool
) -> None:
    s = Signer([K1])
    cb = message(id="cb", args=own_args, immutable=immutable)
    prefix, suffix = split_for_results(cb, s)
    # as settle.lua splices: results joined by commas; none for an immutable callback (the
    # trailing comma of the prefix is dropped then)
    results = b"" if immutable else b'10,"x",[1,{"a":2}]'
    if not results and prefix.endswith(b","):
        prefix = prefix[:-1]
    body = prefix + results + suffix
    msg = decode_task(body)
    assert msg.chord_args == len(own_args)
    assert msg.args == [*own_args, *([] if immutable else [10, "x", [1, {"a": 2}]])]
    assert task_problem(s, msg, body) is None
    expected = encode(
        msgspec.structs.replace(cb, args=[*own_args, CHORD_RESULTS_MARK], chord_args=len(own_args))
    )
    assert task_payload(msg) == expected
    forged = body.replace(b'"id":"cb"', b'"id":"cc"')
    assert task_problem(s, decode_task(forged), forged) is not None


def test_unsigned_chord_template_is_unchanged() -> None:
    cb = message(id="cb", args=["tag"])
    prefix, suffix = split_for_results(cb)
    assert prefix + b'"mark"' + suffix == encode(msgspec.structs.replace(cb, args=["tag", "mark"]))


# -- periodic definitions ------------------------------------------------------------------------


def test_definitions_sign_and_verify() -> None:
    defn = PeriodicDefinition(code="c1", spec="* * * * *", tz="UTC", kind="task", tasks=[message()])
    with pytest.raises(InvalidSignature, match=r"'c1'.*unsigned"):
        verify_definition(defn, Signer([K1]))
    signed = sign_definition(defn, Signer([K1]))
    stored = periodic_decoder.decode(encode(signed))
    verify_definition(stored, Signer([K2, K1]))
    with pytest.raises(InvalidSignature, match=key_id(K1)):
        verify_definition(stored, Signer([K2]))
    with pytest.raises(InvalidSignature, match="altered"):
        verify_definition(msgspec.structs.replace(stored, spec="0 * * * *"), Signer([K1]))
    assert periodic_decoder.decode(encode(defn)).sig == ""


# -- settings --------------------------------------------------------------------------------------


def test_signing_keys_from_env_are_a_comma_separated_list() -> None:
    cnf = Config.from_env({"VECNA_SIGNING_KEYS": f" {K1}, {K2} ,"})
    assert cnf.signing_keys == [K1, K2]
    assert Config.from_env({"VECNA_SIGNING_KEYS": ""}).signing_keys == []
    assert Config.from_env({}).signing_keys == []


def test_short_signing_key_is_a_config_error_without_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        Config(signing_keys=[K1, "short-secret"])
    assert "signing_keys" in str(info.value)
    assert "16" in str(info.value)
    assert "short-secret" not in str(info.value)
    with pytest.raises(ConfigError) as env_info:
        Config.from_env({"VECNA_SIGNING_KEYS": f"{K1},short-secret"})
    assert str(env_info.value).startswith("environment: VECNA_SIGNING_KEYS: ")
    assert "short-secret" not in str(env_info.value)


def test_signing_keys_from_yaml(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    path = tmp_path / "config.yml"
    path.write_text(f"signing_keys:\n  - {K1}\n  - {K2}\n")
    assert Config.from_yaml(path).signing_keys == [K1, K2]
    path.write_text(f"signing_keys:\n  - {K1}\n  - tiny-one\n")
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    assert "signing_keys" in str(info.value)
    assert "tiny-one" not in str(info.value)
