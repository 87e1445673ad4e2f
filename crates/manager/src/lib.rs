//! hangar-manager
