package search

import (
	"math"
	"testing"
)

func TestIPEncoding(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		bad            bool
	}{
		{name: "ipv4", in: "192.168.1.10", want: "192.168.1.10"},
		{name: "ipv6 compressed as RFC 5952", in: "2001:DB8:0:0:0:0:0:1", want: "2001:db8::1"},
		{name: "ipv4-mapped prints as ipv4", in: "::ffff:10.0.0.1", want: "10.0.0.1"},
		{name: "loopback", in: "::1", want: "::1"},
		{name: "octet out of range", in: "300.1.1.1", bad: true},
		{name: "zone", in: "fe80::1%eth0", bad: true},
		{name: "spaces", in: " 10.0.0.1", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := parseIP(tc.in)
			if tc.bad {
				if err == nil {
					t.Fatalf("parseIP(%q) accepted", tc.in)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ipString(ipTerm(a)); got != tc.want {
				t.Errorf("ipString(ipTerm(%q)) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestIPPrefixRange(t *testing.T) {
	for _, tc := range []struct{ cidr, first, last string }{
		{"192.168.0.0/16", "192.168.0.0", "192.168.255.255"},
		{"10.1.2.3/32", "10.1.2.3", "10.1.2.3"},
		{"2001:db8::/32", "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"0.0.0.0/0", "0.0.0.0", "255.255.255.255"},
	} {
		lo, hi, err := ipPrefixRange(tc.cidr)
		if err != nil {
			t.Fatal(err)
		}
		if ipString(lo) != tc.first || ipString(hi) != tc.last {
			t.Errorf("%s: %s..%s, want %s..%s", tc.cidr, ipString(lo), ipString(hi), tc.first, tc.last)
		}
	}
}

func TestParseULong(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		frac bool
		out  int
	}{
		{in: "0", want: 0},
		{in: "18446744073709551615", want: math.MaxUint64},
		{in: "18446744073709551616", out: 1},
		{in: "-1", out: -1},
		{in: "-0.5", frac: true, out: -1},
		{in: "42.5", want: 42, frac: true},
		{in: "1e3", want: 1000},
	} {
		u, frac, out, err := parseULong(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if out != tc.out || (out == 0 && (u != tc.want || frac != tc.frac)) {
			t.Errorf("parseULong(%s) = %d, %v, %d; want %d, %v, %d", tc.in, u, frac, out, tc.want, tc.frac, tc.out)
		}
		if out == 0 && signedToULong(ulongToSigned(u)) != u {
			t.Errorf("%s does not round-trip", tc.in)
		}
	}
	if ulongToSigned(0) >= ulongToSigned(1<<63) || ulongToSigned(1<<63) >= ulongToSigned(math.MaxUint64) {
		t.Error("the signed encoding does not keep unsigned order")
	}
}

func TestEpochMillisNanos(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1705312800000", 1705312800000000000, true},
		{"1705312800000.123456", 1705312800000123456, true},
		{"1.5", 1500000, true},
		{"1.1234567", 0, false},
		{"9223372036854.775807", math.MaxInt64, true},
		{"9223372036854.775808", 0, false},
		{"abc", 0, false},
	} {
		got, ok := epochMillisNanos(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("epochMillisNanos(%s) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
