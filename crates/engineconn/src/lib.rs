//! hangar-engineconn
