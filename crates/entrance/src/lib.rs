//! hangar-entrance
