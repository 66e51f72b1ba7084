//! The AIMService controller and its pure planning.

pub mod controller;
pub mod dependents;
pub mod health;
pub mod plan;
pub mod prometheus;
pub mod render;
pub mod scaling;
pub mod view;

#[cfg(test)]
mod tests;
