"""``parse_xml_file``: annotation XML goes to the C parser only when it cannot declare an
entity; everything else goes to defusedxml, which refuses entity tricks. Either way the
same tree comes out."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from defusedxml import DefusedXmlException

from desktop_app.core.formats import xml_input
from desktop_app.core.formats.xml_input import parse_xml_file, without_doctype

PLAIN = (
    "<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height></size>"
    "<object><name>caf\u00e9</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>9</xmax>"
    "<ymax>8</ymax></bndbox></object></annotation>"
)
BOMB = (
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l0 "lol">'
    + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    + "]><a>&l9;</a>"
)


def _tree(root: ET.Element) -> bytes:
    return ET.tostring(root)


@pytest.mark.parametrize(
    ("header", "encoding", "fast"),
    [
        ("", "utf-8", True),
        ('<?xml version="1.0"?>\n', "utf-8", True),
        ('<?xml version="1.0" encoding="UTF-8"?>', "utf-8", True),
        ('<?xml version="1.0" encoding="iso-8859-1"?>', "latin-1", True),
        ("\ufeff", "utf-8", True),  # a UTF-8 byte order mark
        ('<?xml version="1.0" encoding="UTF-16"?>', "utf-16", False),
        ('<?xml version="1.0" encoding="cp1252"?>', "cp1252", False),
    ],
)
def test_the_same_tree_from_either_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, header: str, encoding: str, fast: bool
) -> None:
    p = tmp_path / "a.xml"
    p.write_bytes((header + PLAIN).encode(encoding))
    assert without_doctype(p.read_bytes()) is fast
    via_c: list[bool] = []
    fromstring = ET.fromstring
    monkeypatch.setattr(xml_input.ET, "fromstring", lambda d: via_c.append(True) or fromstring(d))
    root = parse_xml_file(p)
    assert via_c == ([True] if fast else [])
    assert root.findtext("object/name") == "caf\u00e9"
    monkeypatch.undo()
    import defusedxml.ElementTree as SafeET

    assert _tree(root) == _tree(SafeET.parse(p).getroot())


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_entity_tricks_are_refused_in_any_encoding(tmp_path: Path, encoding: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret", encoding="utf-8")
    external = f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]><a>&x;</a>'
    declared = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'
    for i, text in enumerate((BOMB, external, declared)):
        p = tmp_path / f"{i}.xml"
        p.write_bytes(text.encode(encoding))
        assert not without_doctype(p.read_bytes())
        with pytest.raises(DefusedXmlException):
            parse_xml_file(p)


def test_a_doctype_without_entities_still_parses(tmp_path: Path) -> None:
    p = tmp_path / "a.xml"
    p.write_text('<?xml version="1.0"?><!DOCTYPE annotation>' + PLAIN, encoding="utf-8")
    assert parse_xml_file(p).findtext("filename") == "a.jpg"


def test_malformed_xml_raises_parse_error_with_its_position(tmp_path: Path) -> None:
    p = tmp_path / "a.xml"
    p.write_text("<annotation>\n  <filename>a.jpg</filename\n</annotation>", encoding="utf-8")
    with pytest.raises(ET.ParseError) as info:
        parse_xml_file(p)
    assert info.value.position[0] == 3
    with pytest.raises(OSError):
        parse_xml_file(tmp_path / "missing.xml")
