"""Who is using this browser tab.

While no user exists the studio is open to whoever reaches it (the router only serves so on
loopback) and everyone acts as core.access.LOCAL. Once a user exists, the router shows only the
sign-in form until a user signs in; a signed, expiring token then lives in this tab's session
state and in a cookie (so a reload keeps them in) until they sign out. Every page asks
`page_actor()` who it acts for and passes that actor to core, which checks the role.
"""

import streamlit as st

from core import access, summary
from core.access import LOCAL, Actor, actor_for
from core.config import get_settings
from core.errors import AscentError

COOKIE = "ascent_session"
_TOKEN = "ascent-session-token"

# The cookie is written by the browser itself: Streamlit has no response to set one on. The
# token is signed and checked on every run, so the cookie carries nothing a user could forge.
_COOKIE_JS = """
export default function (component) {
  const { data } = component;
  if (!data || !data.name) return;
  const secure = window.location.protocol === "https:" ? "; Secure" : "";
  const value = data.value ? encodeURIComponent(data.value) : "";
  const age = data.value ? data.max_age : 0;
  document.cookie = `${data.name}=${value}; Path=/; Max-Age=${age}; SameSite=Strict${secure}`;
}
"""
_cookie = st.components.v2.component("ascent_session_cookie", js=_COOKIE_JS)


def _write_cookie(token: str | None) -> None:
    max_age = int(get_settings().session_hours * 3600)
    _cookie(data={"name": COOKIE, "value": token or "", "max_age": max_age}, key="ascent-cookie", height=0)


def _cookie_token() -> str | None:
    try:
        return st.context.cookies.get(COOKIE)
    except Exception:  # no browser (AppTest), no cookies
        return None


def current_actor() -> Actor | None:
    """LOCAL while no user exists; the signed-in user; None when someone must sign in."""
    if not access.any_users():
        return LOCAL
    token = st.session_state.get(_TOKEN) or _cookie_token()
    user = access.session_user(token)
    if user is None:
        st.session_state.pop(_TOKEN, None)
        return None
    st.session_state[_TOKEN] = token
    return actor_for(user)


def page_actor() -> Actor:
    """Who this page acts for. Called first by every page.

    A deep link (a bookmark of /runs) that is the first request a fresh server gets makes
    Streamlit run that page file alone, as its old pages-folder app, without the router and
    its sign-in form; then this switches that mode off for the server and runs the router."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
    actor = current_actor()
    if actor is None:
        st.stop()  # the router shows the sign-in form instead
    assert actor is not None
    return actor


def sign_in_form() -> None:
    """The only thing a signed-out visitor sees: no navigation, no data."""
    st.title("Ascent")
    st.caption("Sign in to use the studio.")
    with st.form("sign-in", border=True, enter_to_submit=True):
        name = st.text_input("User name", autocomplete="username")
        password = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary", icon=":material/login:")
    if submitted:
        try:
            _user, token = access.sign_in(name, password)
        except AscentError as exc:
            st.error(summary.md(exc))
        else:
            st.session_state[_TOKEN] = token
            st.rerun()
    if _cookie_token():  # a cookie that no longer signs anyone in: forget it
        _write_cookie(None)


def signed_in_bar(actor: Actor) -> None:
    """Who is signed in, with a sign-out button, and the cookie kept current (in the router's
    bar above every page)."""
    if actor.name is None:
        st.caption(
            "Open studio (no users yet): `python -m core users add` turns on sign-in.", width="content"
        )
        return
    st.caption(f"Signed in as **{summary.md(actor.name)}** ({actor.role.value})", width="content")
    token = st.session_state.get(_TOKEN)
    if st.button("Sign out", icon=":material/logout:", key="sign-out", type="tertiary"):
        user = access.session_user(token)
        if user is not None:
            access.sign_out(user)
        st.session_state.pop(_TOKEN, None)
        _write_cookie(None)
        st.rerun()
    _write_cookie(token)
