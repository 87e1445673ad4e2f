//! hangar-plugin-shell
