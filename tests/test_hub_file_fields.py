"""keras-hub tokenizer fields that name a file: safe mode refuses them, inline data still loads.

A keras-hub text Task saved as ``.keras`` keeps its tokenizer's data (WordPiece vocabulary, BPE
vocabulary and merges, SentencePiece proto) in the zip's assets and writes those config fields as
None. A hostile file can set them to a path instead: the tokenizer's constructor would then read
any file of this machine (``/etc/passwd``, a key) into the model. Each hostile file here is a
normally saved tiny model whose config.json was edited the way an attacker would
(``hostile_models.edit_keras_config``). A named pipe stands in for the secret file: it records
whether anything opened it, so the tests show both that safe mode never touches the file and that
the attack is live when the file is trusted (``--unsafe``).
"""
from __future__ import annotations

import base64
import errno
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
from helpers_models import invoke_cli
from hostile_models import edit_keras_config

from edgeprune.base.errors import EdgepruneError, UnsafeModelError

keras_hub = pytest.importorskip("keras_hub")

SEQ = 8
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "fox"]
BPE_VOCAB = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5, "b": 6, "ab": 7, "Ġ": 8, "Ġa": 9}
BPE_MERGES = ["a b", "Ġ a"]
WHISPER_SPECIAL = {"<|endoftext|>": 10, "<|startoftranscript|>": 11, "<|notimestamps|>": 12,
                   "<|translate|>": 13, "<|transcribe|>": 14}


def _spm_proto() -> bytes:
    """A tiny SentencePiece model with ALBERT's special pieces (trained here; presets need Kaggle)."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["the quick brown fox", "jumps over the lazy dog"] * 20), model_writer=out,
        vocab_size=14, model_type="word", pad_id=0, unk_id=1,
        bos_id=2, eos_id=3, pad_piece="<pad>", unk_piece="<unk>", bos_piece="[CLS]", eos_piece="[SEP]",
        user_defined_symbols="[MASK]", minloglevel=2)
    return out.getvalue()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """name -> (path of a normally saved tiny text classifier, its tokenizer's inline data)."""
    root = tmp_path_factory.mktemp("hub_text")
    models = keras_hub.models
    proto = _spm_proto()
    bert_tok = models.BertTokenizer(vocabulary=BERT_VOCAB)
    roberta_tok = models.RobertaTokenizer(vocabulary=BPE_VOCAB, merges=BPE_MERGES)
    albert_tok = models.AlbertTokenizer(proto=proto)
    builds = {
        "bert": (models.BertTextClassifier(
            models.BertBackbone(vocabulary_size=len(BERT_VOCAB), num_layers=1, num_heads=2, hidden_dim=8,
                                intermediate_dim=16, max_sequence_length=SEQ), num_classes=2,
            preprocessor=models.BertTextClassifierPreprocessor(bert_tok, sequence_length=SEQ)),
            {"vocabulary": BERT_VOCAB}),
        "roberta": (models.RobertaTextClassifier(
            models.RobertaBackbone(vocabulary_size=len(BPE_VOCAB), num_layers=1, num_heads=2, hidden_dim=8,
                                   intermediate_dim=16, max_sequence_length=SEQ), num_classes=2,
            preprocessor=models.RobertaTextClassifierPreprocessor(roberta_tok, sequence_length=SEQ)),
            {"vocabulary": BPE_VOCAB, "merges": BPE_MERGES}),
        "albert": (models.AlbertTextClassifier(
            models.AlbertBackbone(vocabulary_size=albert_tok.vocabulary_size(), num_layers=1, num_heads=2,
                                  embedding_dim=8, hidden_dim=8, intermediate_dim=16, max_sequence_length=SEQ),
            num_classes=2, preprocessor=models.AlbertTextClassifierPreprocessor(albert_tok, sequence_length=SEQ)),
            {"proto": proto}),
    }
    out = {}
    for name, (model, inline) in builds.items():
        path = root / f"{name}.keras"
        model.save(path)
        out[name] = (path, inline)
    return out


def _tokenizer_entry(config: dict) -> dict:
    return config["config"]["preprocessor"]["config"]["tokenizer"]


def _edited(saved, tmp_path: Path, name: str, fields: dict, cls: str | None = None) -> Path:
    """A copy of the saved ``name`` model whose tokenizer config has ``fields`` set (and, with
    ``cls``, names another keras-hub tokenizer class)."""
    src, _ = saved[name]
    dst = tmp_path / "models" / f"{name}_edited.keras"
    dst.parent.mkdir(exist_ok=True)

    def edit(config):
        entry = _tokenizer_entry(config)
        if cls:
            module = {"WhisperTokenizer": "keras_hub.src.models.whisper.whisper_tokenizer"}[cls]
            entry.update(class_name=cls, module=module, registered_name=f"keras_hub>{cls}")
        entry["config"].update(fields)

    edit_keras_config(src, dst, edit)
    return dst


class Tripwire:
    """A named pipe standing in for a local secret file: ``opened`` tells whether anything opened
    it for reading; whoever does reads ``content``. A writer thread polls with a non-blocking
    open, which succeeds only once a reader holds the pipe open."""

    def __init__(self, path: Path, content: bytes):
        self.path, self.content, self.opened = path, content, False
        os.mkfifo(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(0.01)
                continue
            self.opened = True
            os.set_blocking(fd, True)
            try:
                os.write(fd, self.content)
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_refused(path: Path, field: str, layer: str, tmp_path: Path) -> None:
    """``inspect`` and ``compile`` both refuse ``path`` in one line naming the file, the layer and
    the field, with exit 2 and ``--unsafe`` as the way out, writing nothing."""
    before = _tree(tmp_path)
    for args in (["inspect", path], ["compile", path, "-o", tmp_path / "out"]):
        code, result = invoke_cli(args)
        exc = result.exception
        assert isinstance(exc, UnsafeModelError), (args[0], result.output, exc)
        message = str(exc)
        assert code == 2 and "\n" not in message, message
        assert str(path) in message and f"'{field}'" in message and layer in message, message
        assert "--unsafe" in message, message
    assert _tree(tmp_path) == before, "files appeared"


def test_normally_saved_text_models_load_in_safe_mode(saved):
    """No false alarm: keras-hub keeps the tokenizer's data in the zip's assets (WordPiece, BPE
    and SentencePiece alike), so a normally saved text Task passes safe mode and loads whole."""
    import zipfile

    from edgeprune.load.model_io import load_model

    for name, (path, _) in saved.items():
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
            assets = [n for n in zf.namelist() if n.startswith("assets/preprocessor/tokenizer/")]
        fields = _tokenizer_entry(config)["config"]
        assert all(fields.get(f) is None for f in ("vocabulary", "merges", "proto")), (name, fields)
        assert assets, f"{name}: keras-hub no longer saves its tokenizer as assets"
        loaded = load_model(path)
        assert loaded.model.count_params() > 0
        code, result = invoke_cli(["inspect", path])
        assert code == 0, (name, result.output, result.exception)


@pytest.mark.parametrize("name, fields, field, cls", [
    ("bert", {"vocabulary": "/etc/passwd"}, "vocabulary", None),
    ("roberta", {"merges": "/etc/passwd"}, "merges", None),
    ("roberta", {"vocabulary": BPE_VOCAB, "merges": "/etc/passwd"}, "merges", None),
    ("albert", {"proto": "/etc/passwd"}, "proto", None),
    ("roberta", {"vocabulary": BPE_VOCAB, "merges": BPE_MERGES, "special_tokens": "/etc/passwd"},
     "special_tokens", "WhisperTokenizer"),
])
def test_file_field_is_refused_in_one_line(saved, tmp_path, name, fields, field, cls):
    path = _edited(saved, tmp_path, name, fields, cls)
    _assert_refused(path, field, f"{name}_tokenizer", tmp_path)


@pytest.mark.parametrize("name, field, content", [
    ("bert", "vocabulary", "\n".join(BERT_VOCAB).encode()),
    ("albert", "proto", None),
    ("roberta", "special_tokens", json.dumps(WHISPER_SPECIAL).encode()),
])
def test_the_file_is_read_only_when_trusted(saved, tmp_path, name, field, content):
    """The refusal guards a real read: safe mode never opens the named file, ``--unsafe`` does
    (then the load proceeds or fails for its own reasons, never with a safe-mode refusal).
    WhisperTokenizer's ``special_tokens`` has no safe-mode check in keras-hub itself."""
    secret = tmp_path / "secret"
    wire = Tripwire(secret, content if content is not None else saved[name][1]["proto"])
    try:
        if field == "special_tokens":
            path = _edited(saved, tmp_path, name, {"vocabulary": BPE_VOCAB, "merges": BPE_MERGES,
                                                   "special_tokens": str(secret)}, "WhisperTokenizer")
        else:
            path = _edited(saved, tmp_path, name, {field: str(secret)})
        code, result = invoke_cli(["inspect", path])
        assert code == 2 and isinstance(result.exception, UnsafeModelError), result.output
        time.sleep(0.1)
        assert not wire.opened, "safe mode opened the file the model names"
        code, result = invoke_cli(["inspect", path, "--unsafe"])
        exc = result.exception
        assert not isinstance(exc, UnsafeModelError), exc
        assert code == 0 or isinstance(exc, EdgepruneError), (code, result.output, exc)
        assert wire.opened, f"--unsafe: keras-hub did not read '{field}' (the fixture proves nothing)"
    finally:
        wire.close()


def test_inline_data_in_the_config_loads_in_safe_mode(saved, tmp_path):
    """Inline forms are data, not paths: a list vocabulary, a dict vocabulary with a list of
    merges, and a proto as keras-hub's base64 string all pass safe mode and load."""
    from edgeprune.load.model_io import load_model

    for name, (_, inline) in saved.items():
        fields = dict(inline)
        if "proto" in fields:
            fields["proto"] = base64.b64encode(fields["proto"]).decode()
            assert len(fields["proto"]) > 2048  # keras-hub reads shorter strings as paths
        path = _edited(saved, tmp_path, name, fields)
        assert load_model(path).model.count_params() > 0, name


def test_file_field_tells_paths_from_inline_data():
    from edgeprune.load.model_io.safety import FILE_FIELDS, file_field

    proto = base64.b64encode(b"\x0a" * 3000).decode()
    assert file_field({"vocabulary": ["a", "b"], "merges": ["a b"], "proto": proto,
                       "special_tokens": {"<s>": 0}, "language_tokens": None}) is None
    for field in FILE_FIELDS:
        assert file_field({field: "vocab.txt"}) == field
    assert file_field({"proto": "x" * 3000 + "/etc/passwd"}) == "proto"  # long, but not base64
