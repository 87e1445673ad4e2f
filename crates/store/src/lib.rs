//! hangar-store
