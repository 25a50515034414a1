use super::*;

fn parse(s: &str) -> NetConfig {
    NetConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn checked(s: &str) -> NetConfig {
    let mut c = parse(s);
    c.check().unwrap_or_else(|e| panic!("{s}: {e}"));
    c
}

fn parse_err(s: &str) -> String {
    NetConfig::parse(s).unwrap_err().to_string()
}

fn check_err(s: &str) -> String {
    parse(s).check().unwrap_err().to_string()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn defaults_for_a_large_network() {
    // pkg/subnet/config_test.go TestConfigDefaults
    let c = checked(r#"{ "network": "10.3.0.0/16" }"#);
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.subnet_min, Some(v4("10.3.1.0")));
    assert_eq!(c.subnet_max, Some(v4("10.3.255.0")));
    assert!(c.enable_ipv4 && !c.enable_ipv6 && !c.enable_nftables);
    assert_eq!(c.backend_type, "vxlan");
    assert!(c.backend.is_none());
}

#[test]
fn subnet_len_default_per_prefix() {
    for (net, len, min, max) in [
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.3.0.0/22", 24, "10.3.1.0", "10.3.3.0"),
        ("10.3.0.0/23", 25, "10.3.0.128", "10.3.1.128"),
        ("10.3.0.0/24", 26, "10.3.0.64", "10.3.0.192"),
        ("10.3.0.0/25", 27, "10.3.0.32", "10.3.0.96"),
        ("10.3.0.0/26", 28, "10.3.0.16", "10.3.0.48"),
        ("10.3.0.0/27", 29, "10.3.0.8", "10.3.0.24"),
        ("10.3.0.0/28", 30, "10.3.0.4", "10.3.0.12"),
        // Top of the address space: Go relies on uint32 wrap-around here.
        ("255.255.0.0/16", 24, "255.255.1.0", "255.255.255.0"),
        ("0.0.0.0/1", 24, "0.0.1.0", "127.255.255.0"),
    ] {
        let c = checked(&format!(r#"{{"Network": "{net}"}}"#));
        assert_eq!(
            (c.subnet_len, c.subnet_min, c.subnet_max),
            (len, Some(v4(min)), Some(v4(max))),
            "{net}"
        );
    }
}

#[test]
fn explicit_bounds_and_len() {
    // The user's document example.
    let c = checked(
        r#"{"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0",
            "Backend": {"Type": "udp", "Port": 7890}}"#,
    );
    assert_eq!(c.subnet_len, 20);
    assert_eq!(c.subnet_min, Some(v4("10.10.0.0")));
    assert_eq!(c.subnet_max, Some(v4("10.99.0.0")));
    assert_eq!(c.backend_type, "udp");
    assert_eq!(
        c.backend.as_ref().unwrap().get(),
        r#"{"Type": "udp", "Port": 7890}"#
    );
    // SubnetMin of 0.0.0.0 counts as unset, as in Go.
    let c = checked(r#"{"Network": "10.3.0.0/16", "SubnetMin": "0.0.0.0"}"#);
    assert_eq!(c.subnet_min, Some(v4("10.3.1.0")));
    // Min equal to max: exactly one subnet.
    let c =
        checked(r#"{"Network": "10.3.0.0/16", "SubnetMin": "10.3.9.0", "SubnetMax": "10.3.9.0"}"#);
    assert_eq!(
        (c.subnet_min, c.subnet_max),
        (Some(v4("10.3.9.0")), Some(v4("10.3.9.0")))
    );
}

#[test]
fn empty_ranges_are_rejected() {
    // Go accepts these and then fails every allocation with "out of
    // subnets" (ours: a configuration error naming both bounds).
    assert_eq!(
        check_err(
            r#"{"Network": "10.3.0.0/16", "SubnetMin": "10.3.9.0", "SubnetMax": "10.3.2.0"}"#
        ),
        "SubnetMin is above SubnetMax: 10.3.9.0 > 10.3.2.0, no subnet can be allocated"
    );
    // Against a default bound: SubnetMax below the default SubnetMin (the
    // second subnet).
    assert_eq!(
        check_err(r#"{"Network": "10.3.0.0/16", "SubnetMax": "10.3.0.0"}"#),
        "SubnetMin is above SubnetMax: 10.3.1.0 > 10.3.0.0, no subnet can be allocated"
    );
    assert_eq!(
        check_err(
            r#"{"Network": "10.3.0.0/16", "SubnetMin": "10.3.255.0", "SubnetMax": "10.3.254.0"}"#
        ),
        "SubnetMin is above SubnetMax: 10.3.255.0 > 10.3.254.0, no subnet can be allocated"
    );
    assert_eq!(
        check_err(
            r#"{"Network": "10.3.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56",
                "IPv6SubnetMin": "fd00:0:0:9::", "IPv6SubnetMax": "fd00:0:0:2::"}"#
        ),
        "IPv6SubnetMin is above IPv6SubnetMax: fd00:0:0:9:: > fd00:0:0:2::, no subnet can be allocated"
    );
}

#[test]
fn ipv4_validation_errors() {
    assert_eq!(
        check_err("{}"),
        "please define a correct Network parameter in the flannel config"
    );
    assert_eq!(
        check_err(r#"{"Network": "0.0.0.0/0"}"#),
        "please define a correct Network parameter in the flannel config"
    );
    assert_eq!(
        check_err(r#"{"Network": "10.0.0.0/8", "SubnetLen": 31}"#),
        "SubnetLen must be less than /31"
    );
    assert_eq!(
        check_err(r#"{"Network": "10.0.0.0/8", "SubnetLen": 99999999999}"#),
        "SubnetLen must be less than /31"
    );
    assert_eq!(
        check_err(r#"{"Network": "10.0.0.0/8", "SubnetLen": 9}"#),
        "network must be able to accommodate at least four subnets"
    );
    checked(r#"{"Network": "10.0.0.0/8", "SubnetLen": 10}"#);
    assert_eq!(
        check_err(r#"{"Network": "10.0.0.0/29"}"#),
        "network is too small. Minimum useful network prefix is /28"
    );
    assert_eq!(
        check_err(r#"{"Network": "10.3.0.0/16", "SubnetMin": "10.4.0.0"}"#),
        "SubnetMin is not in the range of the Network"
    );
    assert_eq!(
        check_err(r#"{"Network": "10.3.0.0/16", "SubnetMax": "10.2.0.0"}"#),
        "SubnetMax is not in the range of the Network"
    );
    assert_eq!(
        check_err(r#"{"Network": "10.3.0.0/16", "SubnetMin": "10.3.1.5"}"#),
        "SubnetMin is not on a SubnetLen boundary: 10.3.1.5"
    );
    assert_eq!(
        check_err(r#"{"Network": "10.3.0.0/16", "SubnetMax": "10.3.1.128"}"#),
        "SubnetMax is not on a SubnetLen boundary: 10.3.1.128"
    );
}

#[test]
fn ipv6_defaults_and_errors() {
    let c =
        checked(r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "2001:cafe:42::/56"}"#);
    assert_eq!(c.ipv6_subnet_len, 64);
    assert_eq!(c.ipv6_subnet_min, Some(v6("2001:cafe:42:1::")));
    assert_eq!(c.ipv6_subnet_max, Some(v6("2001:cafe:42:ff::")));
    assert_eq!(c.subnet_min, None, "IPv4 part untouched when disabled");
    for (net, len) in [
        ("fd00::/62", 64),
        ("fd00::/63", 65),
        ("fd00::/124", 126),
        ("::/0", 64),
    ] {
        if net == "::/0" {
            continue; // empty network, tested below
        }
        let c = checked(&format!(
            r#"{{"EnableIPv6": true, "Network": "10.0.0.0/8", "IPv6Network": "{net}"}}"#
        ));
        assert_eq!(c.ipv6_subnet_len, len, "{net}");
    }
    let base = r#""EnableIPv4": false, "EnableIPv6": true"#;
    assert_eq!(
        check_err(&format!("{{{base}}}")),
        "please define a correct IPv6Network parameter in the flannel config"
    );
    assert_eq!(
        check_err(&format!(r#"{{{base}, "IPv6Network": "::/0"}}"#)),
        "please define a correct IPv6Network parameter in the flannel config"
    );
    assert_eq!(
        check_err(&format!(
            r#"{{{base}, "IPv6Network": "fd00::/8", "IPv6SubnetLen": 127}}"#
        )),
        "SubnetLen must be less than /127"
    );
    assert_eq!(
        check_err(&format!(
            r#"{{{base}, "IPv6Network": "fd00::/8", "IPv6SubnetLen": 9}}"#
        )),
        "network must be able to accommodate at least four subnets"
    );
    assert_eq!(
        check_err(&format!(r#"{{{base}, "IPv6Network": "fd00::/125"}}"#)),
        "IPv6Network is too small. Minimum useful network prefix is /124"
    );
    assert_eq!(
        check_err(&format!(
            r#"{{{base}, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd01::"}}"#
        )),
        "IPv6SubnetMin is not in the range of the IPv6Network"
    );
    assert_eq!(
        check_err(&format!(
            r#"{{{base}, "IPv6Network": "fd00::/56", "IPv6SubnetMax": "fd01::"}}"#
        )),
        "IPv6SubnetMax is not in the range of the IPv6Network"
    );
    assert_eq!(
        check_err(&format!(
            r#"{{{base}, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00:0:0:1::1"}}"#
        )),
        "IPv6SubnetMin is not on a SubnetLen boundary: fd00:0:0:1::1"
    );
    assert_eq!(
        check_err(&format!(
            r#"{{{base}, "IPv6Network": "fd00::/56", "IPv6SubnetMax": "fd00:0:0:2::8"}}"#
        )),
        "IPv6SubnetMax is not on a SubnetLen boundary: fd00:0:0:2::8"
    );
    // `::` and null both mean unset.
    let c = checked(&format!(
        r#"{{{base}, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "::", "IPv6SubnetMax": null}}"#
    ));
    assert_eq!(c.ipv6_subnet_min, Some(v6("fd00:0:0:1::")));
    assert_eq!(c.ipv6_subnet_max, Some(v6("fd00:0:0:ff::")));
    // The top of the IPv6 space.
    let c = checked(&format!(r#"{{{base}, "IPv6Network": "ffff::/16"}}"#));
    assert_eq!(c.ipv6_subnet_max, Some(v6("ffff:ffff:ffff:ffff::")));
}

#[test]
fn mapped_ipv6_values_round_trip() {
    // Found by fuzzing: these printed in Go's dotted form and did not re-parse.
    for json in [
        r#"{"Network":"10.0.0.0/8","IPv6SubnetMin":"::ffff:1.2.3.4"}"#,
        r#"{"Network":"10.0.0.0/8","IPv6Network":"::ffff:0:0/96"}"#,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/80","IPv6SubnetLen":112}"#,
    ] {
        let c = checked(json);
        let again = checked(&c.to_json());
        assert_eq!(again.to_json(), c.to_json(), "{json}");
    }
    let c = checked(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/80","IPv6SubnetLen":112}"#,
    );
    assert_eq!(
        c.ipv6_subnet_max.map(|a| GoIp(a).to_string()).as_deref(),
        Some("::ffff:ffff:0")
    );
}

#[test]
fn dual_stack_as_in_the_docs() {
    let c = checked(
        r#"{"EnableIPv6": true, "Network": "10.42.0.0/16", "IPv6Network": "2001:cafe:42:0::/56",
            "Backend": {"Type": "vxlan"}}"#,
    );
    assert_eq!(c.stack(), Ok(Stack::Dual));
    assert_eq!(c.ipv6_network.unwrap().to_string(), "2001:cafe:42::/56");
}

#[test]
fn stacks() {
    assert_eq!(parse("{}").stack(), Ok(Stack::Ipv4));
    assert_eq!(
        parse(r#"{"EnableIPv4":false,"EnableIPv6":true}"#).stack(),
        Ok(Stack::Ipv6)
    );
    let mut none = parse(r#"{"EnableIPv4":false}"#);
    assert_eq!(none.check(), Ok(()));
    assert_eq!(none.stack().unwrap_err().to_string(), "none defined stack");
}

#[test]
fn keys_are_case_insensitive_and_unknown_ignored() {
    // pkg/subnet/config_test.go uses these spellings.
    let c = checked(
        r#"{"enableIPv4": true, "enableIPv6": true, "network": "10.3.0.0/16", "ipv6Network": "fd00::/56",
        "ENABLENFTABLES": true, "subnetlen": 25, "SomethingElse": {"x": [1, 2]}}"#,
    );
    assert!(c.enable_ipv6 && c.enable_nftables);
    assert_eq!(c.subnet_len, 25);
    // A repeated key: the later one wins.
    let c = checked(r#"{"Network": "10.3.0.0/16", "network": "10.4.0.0/16"}"#);
    assert_eq!(c.network.unwrap().to_string(), "10.4.0.0/16");
}

#[test]
fn cidrs_are_masked() {
    let c = parse(r#"{"Network": "10.3.1.5/16", "IPv6Network": "fd00::1/64"}"#);
    assert_eq!(c.network.unwrap().to_string(), "10.3.0.0/16");
    assert_eq!(c.ipv6_network.unwrap().to_string(), "fd00::/64");
}

#[test]
fn null_handling_follows_go() {
    // Custom unmarshallers receive `null` and fail on it.
    assert_eq!(
        parse_err(r#"{"Network": null}"#),
        "invalid CIDR address: null"
    );
    assert_eq!(
        parse_err(r#"{"IPv6Network": null}"#),
        "invalid CIDR address: null"
    );
    assert_eq!(
        parse_err(r#"{"SubnetMin": null}"#),
        "invalid IP address format"
    );
    // Plain fields ignore null.
    let c = parse(r#"{"EnableIPv4": null, "SubnetLen": null, "IPv6SubnetMin": null}"#);
    assert!(c.enable_ipv4);
    assert_eq!(c.subnet_len, 0);
    // A null document leaves every default.
    assert_eq!(parse("null"), NetConfig::default());
}

#[test]
fn type_and_syntax_errors() {
    assert_eq!(parse_err(""), "unexpected end of JSON input");
    assert_eq!(
        parse_err("{\"Network\": \"10.0.0.0/8\""),
        "unexpected end of JSON input"
    );
    assert!(parse_err("{\"Network\": }").contains("expected value"));
    assert_eq!(
        parse_err("[]"),
        "json: cannot unmarshal array into Go value of type subnet.Config"
    );
    assert_eq!(
        parse_err(r#"{"SubnetLen": "24"}"#),
        "json: cannot unmarshal string into Go struct field Config.SubnetLen of type uint"
    );
    assert_eq!(
        parse_err(r#"{"SubnetLen": -1}"#),
        "json: cannot unmarshal number -1 into Go struct field Config.SubnetLen of type uint"
    );
    assert_eq!(
        parse_err(r#"{"IPv6SubnetLen": 24.5}"#),
        "json: cannot unmarshal number 24.5 into Go struct field Config.IPv6SubnetLen of type uint"
    );
    assert_eq!(
        parse_err(r#"{"EnableIPv6": "true"}"#),
        "json: cannot unmarshal string into Go struct field Config.EnableIPv6 of type bool"
    );
    // Numbers reach the address parsers (Go trims quotes and parses the rest).
    assert_eq!(parse_err(r#"{"Network": 5}"#), "invalid CIDR address: 5");
    assert_eq!(
        parse_err(r#"{"SubnetMin": 5}"#),
        "invalid IP address format"
    );
    assert_eq!(
        parse_err(r#"{"Network": "fd00::/8"}"#),
        "invalid IPv4 CIDR format"
    );
    assert_eq!(
        parse_err(r#"{"SubnetMax": "fd00::"}"#),
        "invalid IPv4 address format"
    );
    assert_eq!(
        parse_err(r#"{"IPv6SubnetMax": "10.0.0.0"}"#),
        "invalid IPv6 address format"
    );
    assert_eq!(
        parse_err(r#"{"Network": "10.0.0.0/33"}"#),
        "invalid CIDR address: 10.0.0.0/33"
    );
}

#[test]
fn backend_type_parsing() {
    assert_eq!(
        parse(r#"{"Backend": {"Type": "VXLAN", "VNI": 4}}"#).backend_type,
        "VXLAN"
    );
    assert_eq!(
        parse(r#"{"Backend": {"Type": "VXLAN"}}"#).backend_type_lower(),
        "vxlan"
    );
    assert_eq!(
        parse(r#"{"Backend": {"type": "host-gw"}}"#).backend_type,
        "host-gw"
    );
    // `{}` and `null` give an empty type, refused later as an unknown backend.
    assert_eq!(parse(r#"{"Backend": {}}"#).backend_type, "");
    let c = parse(r#"{"Backend": null}"#);
    assert_eq!(c.backend_type, "");
    assert_eq!(c.backend.unwrap().get(), "null");
    assert_eq!(
        parse_err(r#"{"Backend": "vxlan"}"#),
        "error decoding Backend property of config: json: cannot unmarshal string into Go value of type struct { Type string }"
    );
    assert_eq!(
        parse_err(r#"{"Backend": {"Type": 1}}"#),
        "error decoding Backend property of config: json: cannot unmarshal number into Go struct field .Type of type string"
    );
    assert_eq!(parse(r#"{"Backend": {"Type": null}}"#).backend_type, "");
}

#[test]
fn to_json_round_trips() {
    let c = checked(
        r#"{"EnableIPv6": true, "Network": "10.42.0.0/16", "IPv6Network": "2001:cafe:42::/56",
        "Backend": {"Type": "vxlan", "VNI": 2}}"#,
    );
    let json = c.to_json();
    assert_eq!(
        json,
        r#"{"EnableIPv4":true,"EnableIPv6":true,"EnableNFTables":false,"Network":"10.42.0.0/16","IPv6Network":"2001:cafe:42::/56","SubnetMin":"10.42.1.0","SubnetMax":"10.42.255.0","IPv6SubnetMin":"2001:cafe:42:1::","IPv6SubnetMax":"2001:cafe:42:ff::","SubnetLen":24,"IPv6SubnetLen":64,"Backend":{"Type":"vxlan","VNI":2}}"#
    );
    let mut again = NetConfig::parse(&json).unwrap();
    again.check().unwrap();
    assert_eq!(again.to_json(), json);
}
