//! Triton's `reshape`: the shape a client sends (the config's `dims`) and the shape the
//! backend sees (`reshape.shape`) may differ; the batch dimension, when there is one, stays.

use crate::error::{Error, Result};

/// Maps a concrete shape declared as `from` into the shape declared as `to`.
/// A single -1 in `to` is solved from the element count; several take the variable dims
/// (the -1s of `from`) of `actual`, in order. Both sides must hold the same element count.
pub fn map_shape(name: &str, actual: &[i64], from: &[i64], to: &[i64]) -> Result<Vec<i64>> {
    let total: i64 = actual.iter().product();
    let unknown = to.iter().filter(|&&d| d == -1).count();
    let shape: Vec<i64> = if unknown == 1 {
        let known: i64 = to.iter().filter(|&&d| d != -1).product();
        if known == 0 || total % known != 0 {
            return Err(reshape_error(name, actual, to));
        }
        to.iter()
            .map(|&d| if d == -1 { total / known } else { d })
            .collect()
    } else {
        let mut variable = actual
            .iter()
            .zip(from)
            .filter(|(_, d)| **d == -1)
            .map(|(a, _)| *a);
        to.iter()
            .map(|&d| {
                if d == -1 {
                    variable.next().unwrap_or(-1)
                } else {
                    d
                }
            })
            .collect()
    };
    if shape.contains(&-1) || shape.iter().product::<i64>() != total {
        return Err(reshape_error(name, actual, to));
    }
    Ok(shape)
}

fn reshape_error(name: &str, actual: &[i64], to: &[i64]) -> Error {
    Error::invalid(format!(
        "tensor '{name}' of shape {actual:?} cannot be reshaped to {to:?} as its config asks"
    ))
}

#[cfg(test)]
mod tests {
    use super::map_shape;

    #[test]
    fn fixed_and_variable_dims() {
        assert_eq!(map_shape("x", &[4], &[4], &[2, 2]).unwrap(), vec![2, 2]);
        assert_eq!(
            map_shape("x", &[3, 4], &[-1, 4], &[-1, 2, 2]).unwrap(),
            vec![3, 2, 2]
        );
        assert_eq!(map_shape("x", &[6], &[-1], &[2, -1]).unwrap(), vec![2, 3]);
        assert_eq!(map_shape("x", &[1], &[1], &[]).unwrap(), Vec::<i64>::new());
        assert!(map_shape("x", &[5], &[-1], &[2, -1]).is_err());
        assert!(map_shape("x", &[4], &[4], &[3]).is_err());
        assert_eq!(
            map_shape("x", &[2, 3], &[-1, -1], &[-1, 1, -1]).unwrap(),
            vec![2, 1, 3]
        );
        assert!(map_shape("x", &[6], &[-1], &[-1, -1]).is_err());
    }
}
