"""Issue 16 item 7: which local folders a URL may open (LLM_LAB_LOCAL_MODELS), one message for every
refused path whether it exists or not, and echoed values that render literally in the sidebar."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.models import loading
from core.models.loading import ModelLoadError, parse_spec


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A served app (as `streamlit run`) with its runs and cache folders in tmp, and a fake home with .ssh."""
    monkeypatch.setattr(loading, "served", lambda: True)
    monkeypatch.delenv(loading.LOCAL_MODELS_ENV, raising=False)
    monkeypatch.setenv("LLM_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LLM_LAB_CACHE", str(tmp_path / "cache"))
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config.json").write_text(json.dumps({"model_type": "llama"}))  # even a model-shaped one
    monkeypatch.setenv("HOME", str(home))
    return tmp_path


def _refusal(source: str) -> str:
    with pytest.raises(ModelLoadError) as err:
        parse_spec(source)
    return str(err.value).replace(loading.shown(source), "<PATH>")


def test_refused_paths_give_one_message_whether_they_exist_or_not(host):
    outside = _model_folder(host / "elsewhere" / "model")  # a real model folder, but not an allowed one
    sources = ["/etc", "~/.ssh", str(Path.home() / ".ssh"), "/proc/self/cwd", "/nonexistent",
               "/nonexistent/deeper/path", str(outside), "./data", "../", "~"]
    messages = {_refusal(s) for s in sources}
    assert len(messages) == 1, messages
    (message,) = messages
    assert "not a model this server opens" in message and "LLM_LAB_LOCAL_MODELS" in message
    for word in ("exist", "not a model folder", "config.json"):
        assert word not in message


def test_runs_and_cache_folders_open_and_escapes_do_not(host):
    run = _model_folder(host / "runs" / "my-run" / "model")
    cached = _model_folder(host / "cache" / "some-model")
    assert parse_spec(str(run)).source == str(run)
    assert parse_spec(str(cached)).source == str(cached)
    (host / "runs" / "link-out").symlink_to(host / "home" / ".ssh")  # a link out of runs/
    not_a_model = host / "runs" / "plain"
    not_a_model.mkdir()
    for escape in (str(host / "runs" / "link-out"), str(host / "runs" / ".." / "home" / ".ssh"),
                   str(not_a_model), str(host / "runs" / "missing")):
        assert "not a model this server opens" in _refusal(escape)


def test_hub_ids_stay_hub_ids_on_a_restricted_host(host, monkeypatch):
    monkeypatch.chdir(host)
    _model_folder(host / "org" / "name")  # a relative folder spelled like a Hub id is never opened
    assert parse_spec("org/name").source == "org/name"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        loading.load_model(parse_spec("org/name"))
    with pytest.raises(ModelLoadError, match="not a valid Hugging Face model id"):
        parse_spec("not a valid id!!")


def test_settings_off_any_and_an_allow_list(host, monkeypatch):
    run = _model_folder(host / "runs" / "r" / "model")
    mine = _model_folder(host / "models" / "mine")
    other = _model_folder(host / "other" / "m")
    monkeypatch.setenv(loading.LOCAL_MODELS_ENV, "off")
    assert "not a model this server opens" in _refusal(str(run))
    monkeypatch.setenv(loading.LOCAL_MODELS_ENV, os.pathsep.join([str(host / "models"), str(host / "x")]))
    assert parse_spec(str(mine)).source == str(mine)
    assert parse_spec(str(run)).source == str(run)  # the runs folder stays open beside the list
    assert "not a model this server opens" in _refusal(str(other))
    monkeypatch.setenv(loading.LOCAL_MODELS_ENV, "any")
    assert parse_spec(str(other)).source == str(other)
    with pytest.raises(ModelLoadError, match="is a folder but not a model folder"):
        loading.hub_config("/etc")  # one user on a laptop: the old, more precise messages


def test_cli_default_is_any_and_served_default_is_runs(host, monkeypatch):
    other = _model_folder(host / "other" / "m")
    assert "not a model this server opens" in _refusal(str(other))
    monkeypatch.setattr(loading, "served", lambda: False)
    assert parse_spec(str(other)).source == str(other)


def test_served_means_a_streamlit_server(monkeypatch):
    import sys

    assert not loading.served()  # pytest, AppTest and the CLI are not servers
    monkeypatch.setitem(sys.modules, "streamlit.web.bootstrap", object())  # what `streamlit run` imports
    assert loading.served()


@pytest.mark.parametrize("source", ["/etc", "/nonexistent"])
def test_link_to_a_refused_folder_shows_the_one_message(host, source):
    from streamlit.testing.v1 import AppTest

    from tests_paths import ROOT
    from ui.models import ERROR_KEY

    at = AppTest.from_file(str(ROOT / "pages/1_Architecture.py"), default_timeout=180)
    at.query_params["model"] = source
    at.run()
    assert not at.exception
    assert "not a model this server opens" in at.session_state[ERROR_KEY]
    assert len(at.sidebar.error) == 1


def test_markdown_in_an_echoed_model_renders_literally(host):
    from streamlit.testing.v1 import AppTest

    from tests_paths import ROOT
    from ui.models import literal

    evil = "x`y **bold** [click](https://evil.example) $x^2$ <b>b</b>"
    at = AppTest.from_file(str(ROOT / "pages/1_Architecture.py"), default_timeout=180)
    at.query_params["model"] = evil
    at.run()
    assert not at.exception
    (error,) = at.sidebar.error
    assert "](https://evil.example)" not in error.value.replace("\\]\\(", "")
    assert "\\[click\\]\\(https" in error.value and "\\*\\*bold\\*\\*" in error.value
    assert error.value == literal(at.session_state["lab_model_error"])
    # The renderer links a bare URL even when escaped (seen in Chromium): `://` is split by a word joiner.
    assert "://" not in error.value.replace("\\", "") and "https\\:\u2060//evil" in error.value
    assert literal("mail a@b.c or www.x.org").count("\u2060") == 2
