//! Query parameters of the listing routes: `page`/`limit` or `offset`/`limit`, and `city`.
//!
//! Pure parsing, so every rule is unit tested; a bad value is a 400 naming the parameter.

use crate::domain::Page;

use super::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub page: Page,
    /// A non-empty city filter, as given (folding happens in the store).
    pub city: Option<String>,
}

/// The query of the listing routes, as the OpenAPI document describes it; read by
/// [`parse_list_query`], which names the parameter of any refusal.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListParams {
    /// The page, from 1 (with `limit`); not with `offset`.
    #[param(minimum = 1)]
    page: Option<u64>,
    /// How many items, 1..100.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
    /// How many items to skip (with `limit`); not with `page`.
    offset: Option<u64>,
    /// Only this city, matched without case or accents.
    #[param(max_length = 100)]
    city: Option<String>,
}

fn invalid(which: &str) -> ApiError {
    ApiError::bad_request(format!("Parámetro inválido en la consulta: {which}"))
}

/// Parses the query pairs; `default_limit` applies when `limit` is absent, and `limit` must be
/// within `1..=max_limit`.
pub fn parse_list_query(
    pairs: &[(String, String)],
    default_limit: u64,
    max_limit: u64,
) -> Result<ListQuery, ApiError> {
    let mut page = None;
    let mut offset = None;
    let mut limit = None;
    let mut city = None;
    for (key, value) in pairs {
        let slot = match key.as_str() {
            "page" => &mut page,
            "offset" => &mut offset,
            "limit" => &mut limit,
            "city" => &mut city,
            _ => continue,
        };
        if slot.is_some() {
            return Err(invalid(&format!("{key} (repetido)")));
        }
        *slot = Some(value.trim().to_string());
    }
    let number = |name: &str, value: &str| value.parse::<u64>().map_err(|_| invalid(name));

    let limit = match limit {
        Some(v) => number("limit", &v)?,
        None => default_limit,
    };
    if limit == 0 || limit > max_limit {
        return Err(invalid("limit"));
    }
    let offset = match (page, offset) {
        (Some(_), Some(_)) => return Err(invalid("page y offset no pueden usarse juntos")),
        (Some(p), None) => {
            let p = number("page", &p)?;
            if p == 0 {
                return Err(invalid("page"));
            }
            (p - 1).checked_mul(limit).ok_or_else(|| invalid("page"))?
        }
        (None, Some(o)) => number("offset", &o)?,
        (None, None) => 0,
    };
    let city = match city {
        Some(c) if c.chars().count() > 100 => return Err(invalid("city")),
        Some(c) if !c.is_empty() => Some(c),
        _ => None,
    };
    Ok(ListQuery {
        page: Page { offset, limit },
        city,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, ApiError> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_list_query(&owned, 10, 100)
    }

    fn page(offset: u64, limit: u64) -> Page {
        Page { offset, limit }
    }

    #[test]
    fn defaults_and_both_pagination_styles() {
        assert_eq!(q(&[]).unwrap().page, page(0, 10));
        assert_eq!(
            q(&[("page", "3"), ("limit", "5")]).unwrap().page,
            page(10, 5)
        );
        assert_eq!(
            q(&[("offset", "7"), ("limit", "5")]).unwrap().page,
            page(7, 5)
        );
        assert_eq!(q(&[("limit", "100")]).unwrap().page, page(0, 100));
        assert_eq!(q(&[("other", "x")]).unwrap().page, page(0, 10));
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (pairs, which) in [
            (vec![("page", "0")], "page"),
            (vec![("page", "-1")], "page"),
            (vec![("page", "abc")], "page"),
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "101")], "limit"),
            (vec![("limit", "1.5")], "limit"),
            (vec![("offset", "-3")], "offset"),
            (vec![("page", "1"), ("offset", "0")], "offset"),
            (vec![("limit", "1"), ("limit", "2")], "limit"),
            (
                vec![("page", "18446744073709551615"), ("limit", "100")],
                "page",
            ),
        ] {
            let err = q(&pairs).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{pairs:?}");
            let text = err.to_string();
            assert!(
                text.starts_with("Parámetro inválido en la consulta: "),
                "{text}"
            );
            assert!(text.contains(which), "{pairs:?} → {text}");
        }
    }

    #[test]
    fn city_is_trimmed_and_empty_means_all() {
        assert_eq!(
            q(&[("city", " Bogotá ")]).unwrap().city.as_deref(),
            Some("Bogotá")
        );
        assert_eq!(q(&[("city", "")]).unwrap().city, None);
        assert!(q(&[("city", &"x".repeat(101))]).is_err());
    }
}
