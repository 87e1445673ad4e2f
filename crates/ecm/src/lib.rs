//! hangar-ecm
