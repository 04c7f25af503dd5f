from proxy.accounting.estimate.functions import render_function

WEATHER = {
    "name": "get_current_weather",
    "description": "Gets the user's current weather",
    "parameters": {"type": "object", "properties": {}},
}


def test_a_function_without_parameters():
    assert render_function(WEATHER) == (
        "// Gets the user's current weather\ntype get_current_weather = () => any;"
    )


def test_parameters_render_as_typescript():
    function = {
        "name": "book",
        "description": "Books a table",
        "parameters": {
            "type": "object",
            "required": ["day"],
            "properties": {
                "day": {"type": "string", "description": "a day of the week"},
                "people": {"type": "integer"},
                "seating": {"type": "string", "enum": ["inside", "outside"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "contact": {
                    "type": "object",
                    "properties": {"phone": {"type": "string", "description": "not shown: nested"}},
                },
            },
        },
    }

    assert render_function(function) == "\n".join(
        [
            "// Books a table",
            "type book = (_: {",
            "// a day of the week",
            "day: string,",
            "people?: number,",
            'seating?: "inside" | "outside",',
            "tags?: string[],",
            "contact?: {",
            "  phone?: string,",
            "},",
            "}) => any;",
        ]
    )


def test_odd_definitions_render_without_raising():
    assert render_function({}) == "type  = () => any;"
    assert render_function({"name": "f", "parameters": {"properties": {"x": None}}}) == (
        "type f = (_: {\nx?: any,\n}) => any;"
    )
