"""The record of what the repository APIs changed, shared by the workers of one server through a file."""

from __future__ import annotations

from service.hosting.control import ControlFile, ControlRecord


def test_a_change_is_read_by_every_worker_of_the_same_server(tmp_path):
    source = str(tmp_path / "repository")
    taking, other = ControlFile(9100, source, server=41), ControlFile(9100, source, server=41)
    taking.change(unload="double")
    record = taking.change(unload="triple")
    assert other.read() == record == ControlRecord(frozenset({"double", "triple"}), None, (), 2)
    other.change(load="double")
    assert taking.read().unloaded == {"triple"} and taking.read().changes == 3


def test_a_given_config_is_kept_with_the_config_file_as_it_was(tmp_path):
    control = ControlFile(9101, str(tmp_path / "models.config"), server=7)
    control.change(unload="double")
    record = control.change(config=('model_config_list { config { name: "a" base_path: "a" } }', (120, 99)))
    assert (record.config_text.startswith("model_config_list"), record.config_file_stamp) == (True, (120, 99))
    assert control.read().unloaded == set(), "a given config says all that serves, whatever was unloaded"


def test_the_record_of_an_earlier_server_or_another_source_is_not_read(tmp_path):
    source = str(tmp_path / "repository")
    ControlFile(9102, source, server=41).change(unload="double")
    assert ControlFile(9102, source, server=42).read() == ControlRecord(), "a restarted server reads the files"
    assert ControlFile(9102, str(tmp_path / "other"), server=41).read() == ControlRecord()
    assert ControlFile(9103, source, server=41).read() == ControlRecord()


def test_an_unreadable_record_reads_as_none(tmp_path):
    control = ControlFile(9104, str(tmp_path / "repository"), server=41)
    with open(control.path, "w") as file:
        file.write('{"server": 41, "unloaded": [')
    assert control.read() == ControlRecord()
    assert control.change(unload="double").unloaded == {"double"}
