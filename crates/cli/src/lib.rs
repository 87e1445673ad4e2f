//! hangar-cli
