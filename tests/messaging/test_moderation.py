"""Reports and soft deletes: who may, and that the text never comes back but to admins."""

from __future__ import annotations

import pytest

from tests.messaging.conftest import ROLES, Db
from tests.messaging.helpers import refused

SECRET = "something nasty"


def show_conversation(db: Db) -> dict[str, str]:
    """An organizer's show, a DM in that show's context between an MVP and an attendee."""
    organizer = db.make_user("show_organizer")
    show = db.make_show(organizer)
    attendee, mvp = db.make_user("attendee"), db.make_user("mvp_dealer")
    message = db.as_user(attendee).rpc1(
        "send_direct_message", p_recipient_id=mvp, p_message_text=SECRET, p_show_id=show)
    conv = str(db.val("select conversation_id from public.messages where id = %s", (message,)))
    return {"organizer": organizer, "show": show, "attendee": attendee, "mvp": mvp,
            "message": str(message), "conv": conv}


@pytest.mark.parametrize("role", [*ROLES, "own_organizer"])
def test_moderation_by_role(v2db: Db, role: str) -> None:
    s = show_conversation(v2db)
    moderator = s["organizer"] if role == "own_organizer" else v2db.make_user(role)
    api = v2db.as_user(moderator)
    call = lambda: api.rpc1("moderate_delete_message", p_message_id=s["message"])  # noqa: E731
    if role in ("admin", "own_organizer"):
        assert call() is True
        assert call() is False  # already deleted
        assert v2db.val("select is_deleted from public.messages where id = %s",
                        (s["message"],)) is True
    else:
        refused(call, "PT403")
        assert v2db.val("select is_deleted from public.messages where id = %s",
                        (s["message"],)) is False


def test_organizer_cannot_moderate_conversations_without_a_show(v2db: Db) -> None:
    organizer = v2db.make_user("show_organizer")
    a, m = v2db.make_user("attendee"), v2db.make_user("mvp_dealer")
    message = v2db.as_user(a).rpc1("send_direct_message", p_recipient_id=m, p_message_text="hi")
    refused(lambda: v2db.as_user(organizer).rpc1("moderate_delete_message",
                                                 p_message_id=message), "PT403")


def test_moderation_of_unknown_message_is_404(v2db: Db) -> None:
    admin = v2db.make_user("admin")
    refused(lambda: v2db.as_user(admin).rpc1(
        "moderate_delete_message", p_message_id="00000000-0000-4000-8000-000000000000"), "PT404")


def test_placeholder_hides_the_text_on_every_path_but_the_admin_function(v2db: Db) -> None:
    s = show_conversation(v2db)
    admin = v2db.make_user("admin")
    assert v2db.as_user(admin).rpc1("moderate_delete_message", p_message_id=s["message"],
                                    p_reason="abuse") is True
    for user in (s["attendee"], s["mvp"]):
        api = v2db.as_user(user)
        rows = api.sql("select message_text, is_deleted from public.messages where id = %s",
                       (s["message"],))
        assert len(rows) == 1 and rows[0][1] is True and SECRET not in rows[0][0]
        page = api.rpc("get_conversation_messages", p_conversation_id=s["conv"])
        assert [(r[2], r[3]) for r in page] == [(None, True)]
        inbox = api.rpc("get_user_conversations")
        assert all(SECRET not in (c[3] or "") for c in inbox)
        assert all(SECRET not in (r[0] or "") for r in api.sql(
            "select last_message_text from public.conversations"))
        assert api.sql("select * from public.moderated_message_texts") == []
    admin_page = v2db.as_user(admin).rpc("get_conversation_messages", p_conversation_id=s["conv"])
    assert [(r[2], r[3]) for r in admin_page] == [(SECRET, True)]
    assert v2db.as_user(admin).sql("select message_text from public.moderated_message_texts"
                                   ) == [(SECRET,)]
    # Who, when and why go into production's own moderation columns.
    assert v2db.q("select deleted_by::text, deletion_reason, deleted_at is not null "
                  "from public.messages where id = %s", (s["message"],)) == [(admin, "abuse", True)]
    # The organizer (a moderator, not an admin) does not see it either.
    assert v2db.as_user(s["organizer"]).sql("select * from public.moderated_message_texts") == []


def test_last_message_text_falls_back_when_an_older_message_is_deleted(v2db: Db) -> None:
    s = show_conversation(v2db)
    v2db.as_user(s["mvp"]).rpc1("send_message", p_conversation_id=s["conv"],
                                p_message_text="latest")
    admin = v2db.make_user("admin")
    v2db.as_user(admin).rpc1("moderate_delete_message", p_message_id=s["message"])
    assert v2db.val("select last_message_text from public.conversations where id = %s",
                    (s["conv"],)) == "latest"


def test_reports(v2db: Db) -> None:
    s = show_conversation(v2db)
    mvp = v2db.as_user(s["mvp"])
    report = mvp.rpc1("report_message", p_message_id=s["message"], p_reason=" spam ")
    # One open report per reporter and message: a repeat returns the same report.
    assert mvp.rpc1("report_message", p_message_id=s["message"], p_reason="again") == report
    assert mvp.sql("select id, report_reason, report_status from public.reported_messages") == [
        (report, "spam", "pending")]
    refused(lambda: mvp.rpc1("report_message", p_message_id=s["message"], p_reason=" "), "PT400")
    outsider = v2db.as_user(v2db.make_user("attendee"))
    refused(lambda: outsider.rpc1("report_message", p_message_id=s["message"], p_reason="x"),
            "PT403")
    assert outsider.sql("select * from public.reported_messages") == []
    refused(lambda: mvp.rpc1("report_message",
                             p_message_id="00000000-0000-4000-8000-000000000000",
                             p_reason="x"), "PT404")
    refused(lambda: mvp.sql("insert into public.reported_messages "
                            "(message_id, reported_by, report_reason) "
                            "values (%s, %s, 'direct')", (s["message"], s["mvp"])), "42501")
    # Moderation closes the pending reports.
    admin = v2db.make_user("admin")
    assert len(v2db.as_user(admin).sql("select * from public.reported_messages")) == 1
    v2db.as_user(admin).rpc1("moderate_delete_message", p_message_id=s["message"])
    assert v2db.val("select report_status from public.reported_messages") == "actioned"
