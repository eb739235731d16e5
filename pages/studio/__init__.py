"""What every page shares: who is signed in (session), and the edge that turns an unexpected
error into one line with an error id (edge). A folder, so Streamlit never lists it as a page."""
